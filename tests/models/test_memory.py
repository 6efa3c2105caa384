"""Memory-bounded white-box steps (issue: release networks cannot take a white-box step at the study's resolution
in memory): activation checkpointing per declared block is bit-identical to the plain path and keeps less for
the backward pass; estimates extrapolate from small probes; choose() decides, or refuses up front.

Speed and memory targets are measured by benchmarks/memory.py, not here."""

import copy
import re
import subprocess
import sys
from fnmatch import fnmatch

import pytest
import torch
from torch import nn

from udcbench.data import load_dataset
from udcbench.errors import SpecError
from udcbench.models import bundled_weights, load_model
from udcbench.models import memory
from udcbench.models.base import ModelInfo, RestorationModel
from udcbench.models.uformer import LeWinBlock
from udcbench.registry import MODELS

TRAINABLE = [entry.name for entry in MODELS.entries() if not entry.info.get("weights_free")]
# more than ≈ 20 s for the two steps on the shared 2-core test machine (Uformer pads to 128×128)
HEAVY = {"uformer-t", "uformer-s", "uformer-b", "restormer", "bnudc", "dagf"}


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-identity holds with one thread; with two, a recomputed block's gradient can round differently in the
    last bit (measured ≤ 5e-7 on nafnet-nano, about 1 run in 6)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name):
    """The model with bundled or random weights, bound to udc-mini's extra inputs where it needs some."""
    model = load_model(name, weights=None if bundled_weights(name) else "random")
    needs = model.contract.extra_inputs
    extras = {k: v[None] for k, v in load_dataset("udc-mini", limit=1)[0].extras.items() if k in needs}
    return model.bind(**extras)


def step(model, image, weights, parameters):
    """Output, input gradient of <output, weights>, and bytes autograd saved outside checkpointed blocks."""
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    image = image.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(image)
    (gradient,) = torch.autograd.grad((out * weights).sum(), image)
    return out.detach(), gradient, sum(saved.values())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in TRAINABLE])
def test_checkpointing_is_bit_identical_and_saves_less(name):
    """Every trainable model: the same output and input gradient (torch.equal), through the wrapper's padding
    (30×46 is off every padding multiple), tone mapping (udcunet), bound extras (discnet) and output index."""
    model = build(name)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 30, 46, generator=generator)
    weights = torch.randn(1, 3, 30, 46, generator=generator)
    parameters = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    memory.set_checkpointing(model, False)
    out, gradient, saved = step(model, image, weights, parameters)
    memory.set_checkpointing(model, True)
    out_low, gradient_low, saved_low = step(model, image, weights, parameters)
    memory.set_checkpointing(model, False)
    assert gradient.abs().sum() > 0
    assert torch.equal(out, out_low)
    assert torch.equal(gradient, gradient_low)
    assert saved_low < 0.8 * saved


@pytest.mark.parametrize("name", TRAINABLE)
def test_every_trainable_model_declares_blocks_that_exist(name):
    entry = MODELS.get(name)
    declaration = entry.info.get("blocks")
    assert declaration, f"{name}: register_model(..., blocks=...) is missing"
    with torch.device("meta"):
        net = entry.factory()
    info = ModelInfo(name=name, family=entry.info["family"], weights="random", parameters=0,
                     contract=entry.info["contract"])
    chosen = memory.block_modules(RestorationModel(net, info))
    assert len(chosen) >= 2
    for item in declaration:  # no stale entry: every class and every name pattern wraps something
        hits = [n for n, m in chosen if (isinstance(m, item) if isinstance(item, type) else fnmatch(n, item))]
        assert hits, f"{name}: block {item!r} matches no module"


def test_models_without_parameters_need_no_blocks_and_others_must_declare(tiny_model):
    wiener = load_model("wiener")
    assert memory.declared_blocks(wiener) == ()
    memory.set_checkpointing(wiener, True)  # nothing to wrap
    assert not memory.is_checkpointing(wiener)
    with pytest.raises(SpecError, match="declares no checkpoint blocks"):
        memory.set_checkpointing(tiny_model, True)
    tiny_model.net.checkpoint_blocks = (nn.Conv2d,)  # a network outside the registry declares them itself
    memory.set_checkpointing(tiny_model, True)
    assert [name for name, _ in memory.block_modules(tiny_model)] == ["body.0", "body.2", "body.4"]


def test_toggles_are_reversible_idempotent_and_survive_copies():
    model = load_model("uformer-nano")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    blocks = [module for _, module in memory.block_modules(model)]
    assert blocks and all(isinstance(module, LeWinBlock) for module in blocks)
    memory.set_checkpointing(model, True)
    memory.set_checkpointing(model, True)
    assert memory.is_checkpointing(model) and all("forward" in module.__dict__ for module in blocks)
    twin = copy.deepcopy(model)  # the copy's blocks are checkpointed and run the copy's own weights
    assert memory.is_checkpointing(twin)
    assert all(m.forward.__self__ is m for _, m in memory.block_modules(twin))
    memory.set_checkpointing(model, False)
    assert not memory.is_checkpointing(model) and all("forward" not in module.__dict__ for module in blocks)
    assert memory.is_checkpointing(twin)
    with memory.checkpointing(model):
        assert memory.is_checkpointing(model)
    assert not memory.is_checkpointing(model)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_a_bound_view_turns_checkpointing_on_for_the_model():
    model = load_model("discnet-nano")
    bound = model.bind(psf_code=torch.zeros(1, 5, 1, 1))
    memory.set_checkpointing(bound, True)
    assert memory.is_checkpointing(model)
    memory.set_checkpointing(model, False)
    assert not memory.is_checkpointing(bound)


def test_checkpointing_is_a_plain_call_without_grad(monkeypatch):
    model = load_model("nafnet-nano")
    calls = []
    real = memory.checkpoint
    monkeypatch.setattr(memory, "checkpoint", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(image)
        memory.set_checkpointing(model, True)
        assert torch.equal(model(image), expected)
    with torch.inference_mode():
        model(image)
    assert calls == []  # no recomputation bookkeeping when nothing will be differentiated
    model(image.requires_grad_(True))
    assert len(calls) == len(memory.block_modules(model))


@pytest.mark.parametrize("name, side", [("nafnet-nano", 192), ("uformer-nano", 256)])
def test_estimate_extrapolates_to_a_direct_measurement(name, side):
    """Probes at 32×32 + 32×64 (nafnet; a straight line) or 128×128 alone (Uformer's square ×128 contract;
    through the origin) predict the peak at 6× or 2× the side within 5 % (measured: exact to < 0.01 %)."""
    model = load_model(name)
    estimate = memory.estimate(model, (3, side, side))
    assert estimate.pixels == side * side and estimate.parameters == memory.resident_bytes(model)
    for mode in ("normal", "low"):
        with memory.checkpointing(model, mode == "low"):
            direct = memory.measure_peak(model, (3, side, side), "cpu")
        assert abs(estimate.need(mode) - direct) <= 0.05 * direct, mode
    assert estimate.low < 0.6 * estimate.plain


def test_choose_keeps_normal_falls_back_to_low_or_refuses_naming_a_size_that_fits():
    model = load_model("nafnet-nano")
    shapes = [(3, 256, 256), (3, 64, 96)]
    est = memory.estimate(model, shapes[0])
    plenty = 10 * est.plain
    between = int((est.need("low") + est.need("normal")) / 2 / memory.MARGIN)
    assert memory.choose(model, shapes, available=plenty) == "normal"
    assert memory.choose(model, shapes, available=between) == "low"
    assert memory.choose(model, shapes, mode="low", available=plenty) == "low"
    with pytest.raises(SpecError, match=r"with --memory normal .*fits: use --memory low"):
        memory.choose(model, shapes, mode="normal", available=between)
    tiny = est.need("low") // 4
    for mode in memory.MODES:
        with pytest.raises(SpecError) as error:
            memory.choose(model, shapes, mode=mode, available=tiny)
        message = str(error.value)
        assert "\n" not in message and message.startswith("nafnet-nano needs ≈ ")
        assert "on 256×256 even with --memory low" in message
        side = int(re.search(r"the largest square image that fits is (\d+)×\1:", message).group(1))
        assert 0 < side < 256 and side % 8 == 0
        assert memory.choose(model, [(3, side, side)], mode="low", available=tiny) == "low"
    with pytest.raises(SpecError, match="use normal, low, auto"):
        memory.choose(model, shapes, mode="high")


def test_estimating_a_model_with_extra_inputs_needs_a_bound_model():
    with pytest.raises(SpecError, match=r"needs psf_code: pass model.bind\(psf_code=...\)"):
        memory.estimate(load_model("discnet-nano"), (3, 64, 64))


def test_available_bytes_sees_meminfo_and_an_address_space_cap():
    with open("/proc/meminfo") as handle:
        total = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemTotal:"))
    assert 0 < memory.available_bytes("cpu") <= total
    code = ("import resource, torch\n"
            "from udcbench.models.memory import available_bytes\n"
            "used = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:'))\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))\n"
            "print(available_bytes('cpu'))\n")
    headroom = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.9 * 2 ** 30 < headroom <= 2 ** 30
