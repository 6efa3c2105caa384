"""Memory-bounded white-box steps: activation checkpointing per block, and peak-memory estimates made up front.

A white-box step (forward + backward w.r.t. the input) keeps every activation of the forward pass for the
backward, so its peak grows with the pixels and the depth of the network (Restormer on 512×512: ≈ 45 GB).
With checkpointing each declared block keeps only its inputs and recomputes its interior when the backward
pass reaches it (`torch.utils.checkpoint`, non-reentrant): the peak drops to the block inputs plus one block's
interior, for one more forward pass of the blocks. The arithmetic is the same op for op, so outputs and input
gradients are bit-identical to the plain path with one CPU thread (with several, PyTorch's parallel CPU kernels
may round a recomputed block's gradient differently in the last bit: ≤ 5e-7 measured). The first checkpointed call imports torch._dynamo (≈ 70 MB).

Blocks are declared next to each model's registration, `register_configs(..., blocks=(TransformerBlock,))`:
module classes and/or fnmatch patterns of module names in the network ("KNet*"); a network outside the
registry may declare a `checkpoint_blocks` attribute. Only the outermost match is checkpointed (no nesting).

    set_checkpointing(model, True)          # RestorationModel or BoundModel; reversible with False
    est = estimate(model, (3, 800, 800))    # MemoryEstimate: .plain, .low (peak bytes), .parameters
    mode = choose(model, [(3, 800, 800)], mode="auto")   # "normal" | "low", or SpecError up front

Estimates probe the real model at one or two small sizes (`probe`) and extrapolate linearly in the pixels the
network sees (after the padding contract); on CPU the probe measures the peak of live tensor bytes (every
tensor an aten op produces, until its storage is freed), on CUDA torch.cuda.max_memory_allocated; parameters
and buffers are added. How that compares with the peak RSS of a real run is measured by benchmarks/memory.py
(benchmarks/RESULTS.md); `choose` keeps a margin for the difference (allocator slack, kernel scratch, libraries
loaded on first use): a mode is used only if its estimate fits in MARGIN (70 %) of the available memory.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from types import MethodType
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from udcbench.errors import SpecError
from udcbench.models.base import BoundModel, RestorationModel
from udcbench.models.host_memory import available_bytes, return_freed_memory  # noqa: F401 (part of this API)
from udcbench.registry import MODELS

MODES = ("normal", "low", "auto")
MARGIN = 0.7  # a mode is chosen only if its estimate is at most this fraction of the available memory
PROBE_SIDE = 32  # probes use the smallest multiple of the padding contract at least this large


# ---------------------------------------------------------------------------------------------- checkpointing

def _checkpointed_call(self: nn.Module, *args, **kwargs):
    """Installed as `block.forward`: the class's forward, under activation checkpointing while autograd records."""
    plain = type(self).forward
    if torch.is_grad_enabled():
        return checkpoint(plain, self, *args, use_reentrant=False, **kwargs)
    return plain(self, *args, **kwargs)


_checkpointed_call.__name__ = "forward"


def _is_wrapped(module: nn.Module) -> bool:
    return getattr(module.__dict__.get("forward"), "__func__", None) is _checkpointed_call


def _unwrap(model: nn.Module) -> RestorationModel:
    while isinstance(model, BoundModel):
        model = model.model
    if not isinstance(model, RestorationModel):
        raise TypeError(f"expected a RestorationModel or BoundModel (udcbench.load_model), got {type(model).__name__}")
    return model


def declared_blocks(model: nn.Module) -> tuple:
    """The model's block declaration: its registration's `blocks=`, else its network's `checkpoint_blocks`;
    () for a network without parameters (nothing to learn, nothing deep to checkpoint, e.g. wiener).
    Raises SpecError for a network with parameters that declares none."""
    wrapper = _unwrap(model)
    registered = wrapper.info.name in MODELS.names()
    blocks = MODELS.get(wrapper.info.name).info.get("blocks") if registered else None
    blocks = blocks or getattr(wrapper.net, "checkpoint_blocks", None)
    if not blocks and any(True for _ in wrapper.net.parameters()):
        raise SpecError(f"model {wrapper.info.name} declares no checkpoint blocks (register_model(..., blocks=...) "
                        "or a `checkpoint_blocks` attribute on the network), so --memory low cannot apply to it")
    return tuple(blocks or ())


def block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every block that checkpointing wraps: the outermost modules of the network
    that match the declaration (an instance of a declared class, or a name matching a declared fnmatch pattern)."""
    declaration = declared_blocks(model)
    classes = tuple(b for b in declaration if isinstance(b, type))
    patterns = [b for b in declaration if isinstance(b, str)]
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in _unwrap(model).net.named_modules():
        if not name or any(name.startswith(outer + ".") for outer, _ in chosen):
            continue
        if isinstance(module, classes) or any(fnmatch(name, p) for p in patterns):
            chosen.append((name, module))
    return chosen


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn activation checkpointing of the declared blocks on or off, in place (reversible, idempotent).

    model: a RestorationModel or a BoundModel (bound and unbound views share the network, so either turns it on
    for both). A checkpointed block keeps only its inputs for the backward pass and recomputes its interior
    there; it acts only while autograd records (under torch.no_grad / inference_mode it is a plain call) and
    gives outputs and gradients bit-identical to the plain path (one CPU thread; see the module docstring). Parameters and state dicts are unaffected;
    copies (copy.deepcopy) stay checkpointed. Raises SpecError for a model with parameters but no declared blocks.
    """
    if enabled:
        for _, module in block_modules(model):
            if not _is_wrapped(module):
                module.forward = MethodType(_checkpointed_call, module)
        return
    for module in _unwrap(model).net.modules():
        if _is_wrapped(module):
            del module.forward


def is_checkpointing(model: nn.Module) -> bool:
    """Whether the model's blocks are checkpointed."""
    return any(_is_wrapped(module) for module in _unwrap(model).net.modules())


@contextmanager
def checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Checkpointing on (or off) inside the `with` block, restored to what it was after."""
    before = is_checkpointing(model)
    set_checkpointing(model, enabled)
    try:
        yield
    finally:
        set_checkpointing(model, before)


# ---------------------------------------------------------------------------------------------- measuring

class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors produced by aten ops while active, each counted until its storage is freed
    (storages deduplicated, so views and in-place results count once). Kernel-internal scratch is not seen."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._upper = 0  # bytes of tracked storages, some of which may have been freed since the last sweep
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self._upper -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                ref = StorageWeakRef(tensor.untyped_storage())  # keeps the storage's address from being reused
                if ref.cdata in inputs or ref.cdata in self._live:
                    continue  # a view or in-place result: of a counted tensor, or of a parameter (not allocated)
                self._live[ref.cdata] = (ref, tensor.untyped_storage().nbytes())
                self._upper += self._live[ref.cdata][1]
                if self._upper > self.peak:  # only a possible new peak needs the exact (swept) total
                    self._sweep()
                    self.peak = max(self.peak, self._upper)
        return out


def _white_box_step(model: nn.Module, shape: tuple[int, int, int], batch: int, device: torch.device) -> None:
    image = torch.rand(batch, *shape, device=device, requires_grad=True)
    restored = model(image)
    torch.autograd.grad(restored.float().square().mean(), image)


def measure_peak(model: nn.Module, shape: Sequence[int], device: torch.device | str, batch: int = 1) -> int:
    """Peak bytes one white-box step (forward + backward w.r.t. the input, with the model's current
    checkpointing) allocates on top of what is resident; the parameters and buffers are not included."""
    device, shape = torch.device(device), tuple(int(s) for s in shape)
    with torch.enable_grad():
        if device.type != "cuda":
            with _LiveTensorBytes() as tracker:
                _white_box_step(model, shape, batch, device)
            return tracker.peak
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _white_box_step(model, shape, batch, device)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared storages counted once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*model.parameters(), *model.buffers()]}
    return sum(storages.values())


# ---------------------------------------------------------------------------------------------- estimating

@dataclass(frozen=True)
class LinearPeak:
    """Peak bytes of a step ≈ fixed + per_pixel · pixels · batch (pixels as the network sees them)."""

    fixed: float
    per_pixel: float

    def bytes(self, pixels: int, batch: int = 1) -> int:
        return int(math.ceil(self.fixed + self.per_pixel * pixels * batch))

    @classmethod
    def fit(cls, points: Sequence[tuple[int, int]]) -> "LinearPeak":
        """The line through the first and last (pixels, bytes) points; through the origin and the last point
        if there is one point, or the line would have a negative intercept (that never under-estimates)."""
        (p1, b1), (p2, b2) = points[0], points[-1]
        slope = (b2 - b1) / (p2 - p1) if p2 > p1 else -1.0
        if slope > 0 and b1 - slope * p1 >= 0:
            return cls(b1 - slope * p1, slope)
        return cls(0.0, b2 / p2)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes of one white-box step on `batch` images of `image_shape` (C, H, W).

    plain / low: without / with checkpointing, parameters and buffers (`parameters`) included: what a process
    needs on top of its own baseline (-1: not estimated). `need(mode)` leaves out the parameters, which are
    already resident once the model is loaded. pixels: per image as the network sees it (after padding).
    """

    model: str
    image_shape: tuple[int, ...]
    batch: int
    device: str
    pixels: int
    parameters: int
    plain: int
    low: int

    def need(self, mode: str) -> int:
        return (self.low if mode == "low" else self.plain) - self.parameters


class MemoryProfile:
    """Peak-memory fits of one model on one device, probed on first use per mode (see `probe`)."""

    def __init__(self, model: nn.Module, device: torch.device | str | None = None):
        wrapper = _unwrap(model)
        missing = [n for n in wrapper.contract.extra_inputs if n not in getattr(model, "extras", {})]
        if missing:
            raise SpecError(f"estimating the memory of {wrapper.info.name} runs it, and it needs "
                            f"{', '.join(missing)}: pass model.bind({missing[0]}=...) with one sample's value")
        self._model = weakref.ref(model)  # the cache in `probe` must not keep the model alive
        self.name, self.contract = wrapper.info.name, wrapper.contract
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.parameters = resident_bytes(wrapper)
        # fits depend on the architecture, not the weights: shared by every model object of one configuration
        # and device in this process (a suite or a test session probes each configuration once)
        architecture = (self.name, type(wrapper.net).__qualname__, self.parameters,
                        repr(sorted((wrapper.info.extra.get("options") or {}).items())), str(self.device),
                        torch.is_autocast_enabled(self.device.type), torch.get_autocast_dtype(self.device.type))
        self.fits: dict[str, LinearPeak] = _FITS.setdefault(architecture, {})

    def probe_shapes(self) -> list[tuple[int, int, int]]:
        """Side: the smallest multiple of the padding contract ≥ PROBE_SIDE; square and (unless the contract
        pads to a square) side × 2·side."""
        multiple = max(1, self.contract.pad_multiple)
        side = multiple * math.ceil(PROBE_SIDE / multiple)
        return [(3, side, side)] + ([] if self.contract.square else [(3, side, 2 * side)])

    def fit(self, mode: str) -> LinearPeak:
        model = self._model()
        if model is None and mode not in self.fits:
            raise ReferenceError(f"the {self.name} model of this MemoryProfile has been deleted")
        if mode not in self.fits and mode == "low" and not declared_blocks(model):
            mode = "normal"  # nothing to checkpoint: low is plain
        if mode not in self.fits:
            with checkpointing(model, mode == "low"):
                points = [(self.pixels(s), measure_peak(model, s, self.device)) for s in self.probe_shapes()]
            self.fits[mode] = LinearPeak.fit(points)
        return self.fits[mode]

    def pixels(self, image_shape: Sequence[int]) -> int:
        height, width = self.contract.padded_size(int(image_shape[-2]), int(image_shape[-1]))
        return height * width

    def estimate(self, image_shape: Sequence[int], batch: int = 1, modes: Iterable[str] = ("normal", "low"),
                 ) -> MemoryEstimate:
        pixels, modes = self.pixels(image_shape), set(modes)
        peak = {m: self.parameters + self.fit(m).bytes(pixels, batch) if m in modes else -1 for m in ("normal", "low")}
        return MemoryEstimate(self.name, tuple(int(s) for s in image_shape), batch, str(self.device),
                              pixels, self.parameters, peak["normal"], peak["low"])

    def largest_square(self, mode: str, budget: float, batch: int = 1) -> int:
        """The largest square side (a multiple of 8 and of the padding contract) whose step needs at most
        `budget` bytes beyond the loaded model; 0 if none."""
        fit = self.fit(mode)
        pixels = max(0.0, budget - fit.fixed) / (fit.per_pixel * batch)
        multiple = math.lcm(max(1, self.contract.pad_multiple), 8)
        return math.isqrt(int(pixels)) // multiple * multiple


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


_PROFILES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_FITS: dict[tuple, dict[str, LinearPeak]] = {}  # architecture -> mode -> fit (see MemoryProfile)


def probe(model: nn.Module, device: torch.device | str | None = None) -> MemoryProfile:
    """The MemoryProfile of `model` on `device` (default: where its parameters are), cached per model object,
    device and autocast state. model: a RestorationModel, or a BoundModel for models with extra inputs
    (DISCNet's psf_code). Each mode is probed on first use with one white-box step at each probe shape
    (32×32 and 32×64 for most models; 128×128 alone for Uformer's square ×128 contract, fitted through the
    origin), under the caller's autocast state."""
    device = torch.device(device) if device is not None else _model_device(model)
    key = (str(device), torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
    cache = _PROFILES.setdefault(model, {})
    if key not in cache:
        cache[key] = MemoryProfile(model, device)
    return cache[key]


def estimate(model: nn.Module, image_shape: Sequence[int], device: torch.device | str | None = None,
             batch: int = 1) -> MemoryEstimate:
    """Predicted peak bytes of one forward+backward w.r.t. the input on `batch` images of `image_shape`
    (C, H, W), plain and with checkpointing, parameters included (see MemoryEstimate and `probe`)."""
    return probe(model, device).estimate(image_shape, batch)


# ---------------------------------------------------------------------------------------------- choosing

def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _refusal(profile: MemoryProfile, est: MemoryEstimate, mode: str, available: int, margin: float) -> str:
    size = f"{est.image_shape[-2]}×{est.image_shape[-1]}" + (f" (batch {est.batch})" if est.batch > 1 else "")
    side = profile.largest_square(mode, margin * available, est.batch)
    return (f"{est.model} needs ≈ {_gb(est.need(mode))} for one white-box step on {size} "
            f"{'even with --memory low' if mode == 'low' else 'with --memory normal'} ({_gb(available)} available, "
            f"{margin:.0%} of it usable); " + (f"the largest square image that fits is {side}×{side}" if side
                                                else "not even a small image fits"))


def choose(model: nn.Module, image_shapes: Iterable[Sequence[int]], device: torch.device | str | None = None,
           mode: str = "auto", available: int | None = None, batch: int = 1, margin: float = MARGIN) -> str:
    """"normal" or "low" for white-box steps on batches of `batch` images of these (C, H, W) shapes, decided
    before the run: apply it with `set_checkpointing(model, answer == "low")`.

    A mode fits if its step's estimate (`MemoryEstimate.need`, the largest image) is at most `margin` ×
    `available` (default: `available_bytes(device)`, taken with the model loaded). "auto" takes normal if it
    fits, else low; "normal" and "low" are kept if they fit. Otherwise raises SpecError, one line naming the
    model, the image size, the estimate and the largest square size that fits ("normal": or --memory low).
    """
    if mode not in MODES:
        raise SpecError(f"--memory {mode!r} is not a memory mode; use {', '.join(MODES)}")
    shapes = [tuple(int(s) for s in shape) for shape in image_shapes]
    if not shapes:
        return "low" if mode == "low" else "normal"
    profile = probe(model, device)
    available = available_bytes(profile.device) if available is None else int(available)
    largest = max(shapes, key=profile.pixels)
    if mode != "low":
        plain = profile.estimate(largest, batch, modes=("normal",))
        if plain.need("normal") <= margin * available:
            return "normal"
    low = profile.estimate(largest, batch, modes=("low",))
    if low.need("low") > margin * available:
        raise SpecError(_refusal(profile, low, "low", available, margin) + ": crop or tile the data, or use a "
                        "machine with more memory")
    if mode == "normal":
        raise SpecError(_refusal(profile, plain, "normal", available, margin) + f", and --memory low needs ≈ "
                        f"{_gb(low.need('low'))}, which fits: use --memory low (or auto)")
    return "low"
