"""Compiled networks for attack loops: `torch.compile` of a model's network, once per (model, input shape,
device), kept only where it is proven equal to eager and faster.

A white-box attack runs the same network hundreds of times on one shape, so compiling it can pay for itself,
but whether it does depends on the network and the machine, so the compiled path is earned per model and shape:

    compiler = Compiler()                                   # one per suite: it caches across its runs
    outcome = compiler.prepare(model, (4, 3, 128, 128))     # the image batch as the attack will see it
    model = outcome.model                                   # same RestorationModel interface, .bind() works
    if outcome.warning:
        print(outcome.warning)                              # one line, when this shape runs eager
    outcome.report()                                        # compile seconds, speed ratio, errors, reason

`prepare` compiles the bare network (`model.net`: the wrapper's padding, value mapping, crop and clamp stay
eager) with `torch.compile(dynamic=False)` for the network's input shape after the contract's padding, and on a
seeded probe input of that shape (uniform images; `extras` supplies inputs such as a PSF code):
1. times the first compiled calls, with autograd on an input that requires grad, without autograd, and under
   `torch.inference_mode` (white-box steps, scoring passes and black-box queries: each is its own graph):
   `compile_seconds`, reported apart;
2. compares the compiled forward + backward with eager: the output, the input gradient of a fixed random
   linear objective and the no-grad and inference-mode outputs, each within `tolerance` (1e-4) relative
   (max |compiled − eager| / max |eager|), and the compiled output must repeat bit for bit on a second call;
3. times forward + backward `repeats` times each way (best of): compiled / eager must be ≤ `max_ratio` (1.0).
If compilation raises or a check fails, the shape runs eager and `outcome.warning` says why in one line, e.g.
"uformer-nano: compiled forward+backward is 1.3× slower than eager on 4×3×128×128 (compile 41 s); running
eager". The compiled model calls the compiled network only with the signatures that passed (shape, strides,
dtype, device, extra inputs' shapes) and in the three autograd states probed (grad on and the input requiring
grad, grad off, inference mode); any other call runs the eager network, so no compilation of minutes starts unannounced
inside an attack. Parameters must be frozen (as `load_model` leaves them); compiled and eager models share them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import nn

from udcbench.models.base import BoundModel, RestorationModel

TOLERANCE = 1e-4  # relative, on the output and on the input gradient
# the run's network-pass counter is a global module hook; it counts the wrapper, so the compiled module's extra
# firing that torch warns about (on every call) changes nothing
warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks",
                        category=UserWarning)
RECOMPILE_LIMIT = 64  # dynamo's per-code-object limit while compiling (a suite compiles many shapes)


def signature(x: torch.Tensor, extras: tuple[torch.Tensor, ...] = ()) -> tuple:
    """What a compiled graph is specialised to: shapes, dtypes and device of the network's inputs (which
    `CompiledNet` makes contiguous, so strides do not count)."""
    return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in (x, *extras))


def _autograd_state(x: torch.Tensor) -> str | None:
    """'grad' (autograd on, input requires grad), 'no_grad' (autograd off) or 'inference' (inference mode): the
    three compiled variants; None for grad on with an input that does not require grad."""
    if torch.is_inference_mode_enabled():
        return "inference"
    if torch.is_grad_enabled():
        return "grad" if x.requires_grad else None
    return "no_grad"


class CompiledNet(nn.Module):
    """A network with compiled callables for some input signatures; every other call runs the network eagerly.

    `net` is the eager network itself (shared, not copied). `variants` maps `signature(x, extras)` to the
    compiled callable, which gets contiguous inputs (an expanded PSF code of a BoundModel and a per-image one
    then share a graph); `trial`, when set, is used for every call (and the signatures seen are recorded) while
    `Compiler.prepare` probes it.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.variants: dict[tuple, Callable] = {}
        self.trial: Callable | None = None
        self.seen: set[tuple] = set()

    def forward(self, x: torch.Tensor, *extras: torch.Tensor):
        if _autograd_state(x) is not None:
            key = signature(x, extras)
            compiled = self.trial if self.trial is not None else self.variants.get(key)
            if compiled is not None:
                if self.trial is not None:
                    self.seen.add(key)
                return compiled(x.contiguous(), *(extra.contiguous() for extra in extras))
        return self.net(x, *extras)


@dataclass
class CompileOutcome:
    """What `Compiler.prepare` decided for one (model, network input shape, device).

    model: the model to run (the compiled wrapper when `compiled`, else the model given), bound to the same
    extra inputs as the model given. shape: the network's input shape after the contract's padding.
    compile_seconds: the first compiled calls (grad, no-grad, inference mode), i.e. mostly compilation. eager_seconds /
    compiled_seconds: one forward + backward, best of the timed repeats. output_error / gradient_error: the
    largest relative difference, compiled vs eager (over the grad, no-grad and inference-mode outputs for output_error).
    reason: why the shape runs eager (None when compiled). cached: this outcome was decided by an earlier call.
    """

    model: nn.Module
    name: str
    shape: tuple[int, ...]
    device: str
    compiled: bool
    compile_seconds: float | None = None
    eager_seconds: float | None = None
    compiled_seconds: float | None = None
    output_error: float | None = None
    gradient_error: float | None = None
    reason: str | None = None
    cached: bool = False
    options: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """compiled / eager time of one forward + backward (below 1: the compiled one is faster)."""
        if self.eager_seconds and self.compiled_seconds is not None:
            return self.compiled_seconds / self.eager_seconds
        return None

    @property
    def verdict(self) -> str:
        """'compiled'; or why it runs eager: 'failed' (compilation raised, or no probe), 'differs' (not equal
        to eager within tolerance, or not repeatable) or 'slower'."""
        if self.compiled:
            return "compiled"
        if self.output_error is None:
            return "failed"
        return "differs" if self.eager_seconds is None else "slower"

    @property
    def warning(self) -> str | None:
        """One line when the shape runs eager, None when compiled."""
        if self.compiled:
            return None
        timing = f" (compile {self.compile_seconds:.0f} s)" if self.compile_seconds is not None else ""
        return f"{self.name}: {self.reason} on {'×'.join(map(str, self.shape))}{timing}; running eager"

    def report(self) -> dict:
        """A JSON-ready summary for logs and benchmarks."""
        def rounded(value, digits):
            return None if value is None else float(f"{value:.{digits}g}")

        return {"model": self.name, "shape": list(self.shape), "device": self.device, "verdict": self.verdict,
                "compile_seconds": rounded(self.compile_seconds, 4), "eager_seconds": rounded(self.eager_seconds, 4),
                "compiled_seconds": rounded(self.compiled_seconds, 4), "ratio": rounded(self.ratio, 3),
                "output_error": rounded(self.output_error, 3), "gradient_error": rounded(self.gradient_error, 3),
                "reason": self.reason, "cached": self.cached, "options": self.options}


def _unwrap(model: nn.Module) -> tuple[RestorationModel, dict[str, torch.Tensor]]:
    """(the RestorationModel, the extra inputs a BoundModel fixes)."""
    extras: dict[str, torch.Tensor] = {}
    while isinstance(model, BoundModel):
        extras = {**model.extras, **extras}
        model = model.model
    if not isinstance(model, RestorationModel):
        raise TypeError(f"expected a RestorationModel or BoundModel (udcbench.load_model), got {type(model).__name__}")
    return model, extras


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value − reference| / max |reference| (0 when both are zero), in float64."""
    value, reference = value.detach().double(), reference.detach().double()
    scale = reference.abs().max().item()
    difference = (value - reference).abs().max().item()
    return difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_backward(model: nn.Module, x: torch.Tensor, weight: torch.Tensor, extras: dict):
    """One forward + backward of a fixed linear objective Σ weight·model(x) -> (output, ∂/∂x)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x, clamp=False, **extras)
        (grad,) = torch.autograd.grad((out * weight).sum(), x)
    return out.detach(), grad


def _best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


class Compiler:
    """Compiles models' networks once per (model, network input shape, device) and keeps what it decided.

    Keep one Compiler for a whole suite: `prepare` on a model and shape seen before returns the cached outcome
    (and the same compiled model) without compiling or timing again. Args: tolerance (relative, output and
    gradient), max_ratio (compiled / eager forward + backward time above which it runs eager), repeats (timed
    forward + backward steps each way), mode / options / backend (passed to torch.compile; dynamic is False),
    seed (of the probe input).
    """

    def __init__(self, tolerance: float = TOLERANCE, max_ratio: float = 1.0, repeats: int = 3,
                 mode: str | None = None, options: dict | None = None, backend: str = "inductor", seed: int = 0):
        self.tolerance, self.max_ratio, self.repeats, self.seed = tolerance, max_ratio, repeats, seed
        self.compile_kwargs = {"backend": backend, "dynamic": False,
                               **({"mode": mode} if mode else {}), **({"options": options} if options else {})}
        self._outcomes: dict[tuple, CompileOutcome] = {}
        self._wrappers: dict[tuple, RestorationModel] = {}
        self._keep: dict[int, RestorationModel] = {}  # models seen, so their ids stay unique while cached

    def outcomes(self) -> list[CompileOutcome]:
        """Every outcome decided so far, in order."""
        return list(self._outcomes.values())

    def prepare(self, model: nn.Module, shape: tuple[int, ...], device: str | torch.device | None = None,
                extras: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32) -> CompileOutcome:
        """Compile `model`'s network for images of `shape` (B, C, H, W) on `device` (default: the model's),
        check it against eager and time both; see the module docstring. Never raises for a network that does
        not compile: the outcome then runs eager and says why. `extras`: the model's extra inputs for the
        probe (a BoundModel's own are used too), shaped as in the run."""
        root, bound = _unwrap(model)
        device = torch.device(device) if device is not None else next(root.parameters(), torch.empty(0)).device
        batch, channels, height, width = shape
        extras = {k: v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 else v  # as a BoundModel feeds them
                  for k, v in {**bound, **(extras or {})}.items()}
        missing = [name for name in root.contract.extra_inputs if name not in extras]
        net_shape = (batch, channels, *root.contract.padded_size(height, width))
        extra_key = tuple((k, tuple(v.shape)) for k, v in sorted(extras.items()))
        key = (id(root), net_shape, dtype, str(device), extra_key)
        self._keep[id(root)] = root
        if key in self._outcomes:
            return self._rebind(replace(self._outcomes[key], cached=True), bound)
        if missing:
            outcome = CompileOutcome(root, root.info.name, net_shape, str(device), False,
                                     reason=f"cannot probe the compiled network without {', '.join(missing)}")
        else:
            outcome = self._probe(root, self._wrapper(root, device), shape, net_shape, device, dtype, extras)
        self._outcomes[key] = outcome
        return self._rebind(outcome, bound)

    def _wrapper(self, root: RestorationModel, device: torch.device) -> RestorationModel:
        key = (id(root), str(device))
        if key not in self._wrappers:
            self._wrappers[key] = RestorationModel(CompiledNet(root.net), root.info).eval()
        return self._wrappers[key]

    @staticmethod
    def _rebind(outcome: CompileOutcome, bound: dict) -> CompileOutcome:
        return replace(outcome, model=outcome.model.bind(**bound)) if bound else outcome

    def _probe(self, root: RestorationModel, wrapper: RestorationModel, shape, net_shape, device: torch.device,
               dtype: torch.dtype, extras: dict) -> CompileOutcome:
        """Compile, check and time one shape; admit its signatures into the wrapper if it passes."""
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.rand(shape, generator=generator).to(device, dtype)
        weight = torch.randn(shape, generator=generator).to(device, dtype)
        extras = {k: v.to(device) for k, v in extras.items()}
        outcome = CompileOutcome(root, root.info.name, net_shape, str(device), False,
                                 options={k: v for k, v in self.compile_kwargs.items() if k != "dynamic"})
        net: CompiledNet = wrapper.net
        net.seen = set()
        try:
            net.trial = torch.compile(net.net, **self.compile_kwargs)
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                            accumulated_recompile_limit=RECOMPILE_LIMIT * 8):
                self._check(outcome, root, wrapper, x, weight, extras, device)
            trial = net.trial
        except Exception as error:  # noqa: BLE001 - any failure of the compiler means: run eager
            first = (str(error).strip().splitlines() or [""])[0][:160]
            outcome.reason = f"torch.compile failed ({type(error).__name__}: {first})"
            return outcome
        finally:
            net.trial = None
        if outcome.reason is None and not net.seen:
            outcome.reason = "the wrapper never called its network"
        if outcome.reason is None:
            for key in net.seen:
                net.variants[key] = trial
            outcome.model, outcome.compiled = wrapper, True
        return outcome

    def _check(self, outcome: CompileOutcome, root, wrapper, x, weight, extras, device) -> None:
        """Fill the outcome's compile time, errors and timings; set `reason` if the compiled path fails."""
        reference, reference_grad = _forward_backward(root, x, weight, extras)
        with torch.no_grad():
            reference_plain = root(x, clamp=False, **extras)
        start = time.perf_counter()
        out, grad = _forward_backward(wrapper, x, weight, extras)
        _sync(device)
        with torch.no_grad():
            plain = wrapper(x, clamp=False, **extras)
        with torch.inference_mode():  # black-box queries
            inferred = wrapper(x, clamp=False, **extras)
        _sync(device)
        outcome.compile_seconds = time.perf_counter() - start
        again, _ = _forward_backward(wrapper, x, weight, extras)
        outcome.output_error = max(relative_error(out, reference), relative_error(plain, reference_plain),
                                   relative_error(inferred, reference_plain))
        outcome.gradient_error = relative_error(grad, reference_grad)
        if outcome.output_error > self.tolerance or outcome.gradient_error > self.tolerance:
            outcome.reason = (f"compiled output/gradient differ from eager by {outcome.output_error:.1e}/"
                              f"{outcome.gradient_error:.1e} relative (tolerance {self.tolerance:g})")
            return
        if not torch.equal(again, out):
            outcome.reason = "compiled output is not repeatable across calls"
            return
        outcome.eager_seconds = _best_time(lambda: _forward_backward(root, x, weight, extras), self.repeats, device)
        outcome.compiled_seconds = _best_time(lambda: _forward_backward(wrapper, x, weight, extras), self.repeats,
                                              device)
        if outcome.ratio > self.max_ratio:
            outcome.reason = (f"compiled forward+backward is {outcome.ratio:.2f}× the eager time"
                              if self.max_ratio < 1.0 or outcome.ratio <= 1.0 else
                              f"compiled forward+backward is {outcome.ratio:.1f}× slower than eager")


__all__ = ["CompileOutcome", "CompiledNet", "Compiler", "TOLERANCE", "relative_error", "signature"]
