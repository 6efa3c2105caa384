"""The compiled path (udcbench.models.compiled): cache per (model, shape, device), fallback to eager with one
line, the wrapper contract kept, and one real torch.compile of a tiny network checked against eager.

Timings are not tested here (benchmarks/compile.py measures them); the speed check is exercised with
monkeypatched timings.
"""

import pytest
import torch
from torch import nn

import udcbench.models.compiled as compiled
from udcbench.models.base import BoundModel, InputContract, ModelInfo, RestorationModel
from udcbench.models.compiled import CompiledNet, Compiler, relative_error


class PsfNet(nn.Module):
    """A 1-conv residual net with an extra per-image input (like discnet's psf_code)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, code):
        return x + self.conv(x) * code[:, :1]


def make_model(net: nn.Module, **contract) -> RestorationModel:
    info = ModelInfo(name="tiny", family="tiny", weights="random", parameters=0, contract=InputContract(**contract))
    model = RestorationModel(net, info).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class FakeCompile:
    """Stands in for torch.compile: counts its calls and the calls of what it returns (the eager net, or
    `transform` applied to its output), or raises."""

    def __init__(self, raises_at=None, transform=None):
        self.compiles, self.calls, self.raises_at, self.transform = 0, 0, raises_at, transform

    def __call__(self, net, **kwargs):
        assert kwargs["dynamic"] is False
        self.compiles += 1
        if self.raises_at == "compile":
            raise RuntimeError("no C++ compiler\nsecond line")

        def run(*args):
            self.calls += 1
            if self.raises_at == "call":
                raise RuntimeError("inductor exploded")
            out = net(*args)
            return self.transform(out) if self.transform else out
        return run


@pytest.fixture
def fake(monkeypatch):
    def install(**kwargs):
        fake_compile = FakeCompile(**kwargs)
        monkeypatch.setattr(torch, "compile", fake_compile)
        return fake_compile
    return install


@pytest.fixture
def fixed_timings(monkeypatch):
    """Eager 1.0 s, compiled `ratio` s per forward+backward, without timing anything."""
    def install(ratio):
        times = iter([1.0, ratio])
        monkeypatch.setattr(compiled, "_best_time", lambda fn, repeats, device: (fn(), next(times))[1])
    return install


@pytest.mark.parametrize("where", ["compile", "call"])
def test_fallback_when_torch_compile_raises(tiny_model, images, fake, where):
    fake(raises_at=where)
    outcome = Compiler().prepare(tiny_model, (4, 3, 32, 32))
    assert outcome.verdict == "failed" and outcome.model is tiny_model
    assert "torch.compile failed (RuntimeError: " in outcome.reason
    assert outcome.warning.startswith("tiny: torch.compile failed") and outcome.warning.endswith("; running eager")
    assert "\n" not in outcome.warning and "4×3×32×32" in outcome.warning
    degraded, _ = images
    assert torch.equal(outcome.model(degraded), tiny_model(degraded))


def test_slower_compiled_falls_back_with_one_line(tiny_model, fake, fixed_timings):
    fake()
    fixed_timings(1.3)
    outcome = Compiler().prepare(tiny_model, (4, 3, 32, 32))
    assert not outcome.compiled and outcome.model is tiny_model and outcome.verdict == "slower"
    assert outcome.ratio == pytest.approx(1.3)
    assert outcome.warning.startswith("tiny: compiled forward+backward is 1.3× slower than eager on 4×3×32×32 "
                                      "(compile ") and outcome.warning.endswith(" s); running eager")


def test_faster_compiled_is_kept(tiny_model, fake, fixed_timings):
    fake()
    fixed_timings(0.5)
    outcome = Compiler().prepare(tiny_model, (4, 3, 32, 32))
    assert outcome.compiled and outcome.warning is None and outcome.ratio == pytest.approx(0.5)
    report = outcome.report()
    assert report["verdict"] == "compiled" and report["output_error"] == 0.0 and report["gradient_error"] == 0.0
    assert report["compile_seconds"] >= 0 and report["reason"] is None


@pytest.mark.parametrize("only_inference", [False, True])
def test_mismatch_falls_back(tiny_model, images, fake, only_inference):
    fake(transform=lambda out: out * (1 + 1e-3) if torch.is_inference_mode_enabled() or not only_inference
         else out)  # only_inference: the graph for black-box queries alone differs
    outcome = Compiler(max_ratio=float("inf")).prepare(tiny_model, (4, 3, 32, 32))
    assert outcome.verdict == "differs" and "differ from eager by 1.0e-03" in outcome.reason
    assert outcome.output_error == pytest.approx(1e-3, rel=1e-3)
    degraded, _ = images
    assert torch.equal(outcome.model(degraded), tiny_model(degraded))


def test_compiles_once_per_model_shape_and_device(tiny_model, images, fake):
    counter = fake()
    compiler = Compiler(max_ratio=float("inf"))
    first = compiler.prepare(tiny_model, (4, 3, 32, 32), "cpu")
    again = compiler.prepare(tiny_model, (4, 3, 32, 32), torch.device("cpu"))
    assert counter.compiles == 1 and first.compiled and not first.cached and again.cached
    assert again.model is first.model
    calls = counter.calls
    degraded, _ = images
    for _ in range(3):  # runs reuse the compiled network: no compilation, every call goes through it
        with torch.no_grad():
            first.model(degraded)
        degraded.requires_grad_(True)
        first.model(degraded).sum().backward()
        degraded = degraded.detach()
    assert counter.compiles == 1 and counter.calls == calls + 6
    other = compiler.prepare(tiny_model, (2, 3, 32, 32))
    assert counter.compiles == 2 and other.compiled and other.model is first.model
    second_model = make_model(tiny_model.net)
    compiler.prepare(second_model, (4, 3, 32, 32))
    assert counter.compiles == 3
    assert [o.shape for o in compiler.outcomes()] == [(4, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32)]


def test_shapes_padded_alike_share_one_compilation(fake):
    counter = fake()
    model = make_model(PsfNet(), pad_multiple=16, extra_inputs=("psf_code",))
    compiler = Compiler(max_ratio=float("inf"))
    code = torch.rand(2, 5, 1, 1)
    first = compiler.prepare(model, (2, 3, 30, 28), extras={"psf_code": code})
    second = compiler.prepare(model.bind(psf_code=code), (2, 3, 32, 25))
    assert first.shape == second.shape == (2, 3, 32, 32) and counter.compiles == 1 and second.cached
    assert isinstance(second.model, BoundModel)


def test_compiled_model_keeps_the_wrapper_contract(fake):
    counter = fake()
    model = make_model(PsfNet(), pad_multiple=16, extra_inputs=("psf_code",))
    code = torch.rand(1, 5, 1, 1, generator=torch.Generator().manual_seed(1))
    outcome = Compiler(max_ratio=float("inf")).prepare(model.bind(psf_code=code), (2, 3, 30, 28))
    assert outcome.compiled and isinstance(outcome.model, BoundModel)
    assert isinstance(outcome.model.model, RestorationModel) and outcome.model.info is model.info
    assert isinstance(outcome.model.model.net, CompiledNet) and outcome.model.model.net.net is model.net
    x = torch.rand(2, 3, 30, 28, generator=torch.Generator().manual_seed(2))
    calls = counter.calls
    with torch.no_grad():
        out = outcome.model(x)
        assert out.shape == x.shape and counter.calls == calls + 1
        assert torch.equal(out, model(x, psf_code=code.expand(2, -1, -1, -1)))
        rebound = outcome.model.model.bind(psf_code=code)  # .bind on the compiled RestorationModel
        assert torch.equal(rebound(x), out) and counter.calls == calls + 2
        y = torch.rand(3, 3, 30, 28)  # a batch it was not compiled for runs eager
        assert torch.equal(rebound(y), model.bind(psf_code=code)(y)) and counter.calls == calls + 2
    with torch.inference_mode():  # black-box queries: the inference-mode variant, probed by prepare
        assert torch.equal(rebound(x), out) and counter.calls == calls + 3
    rebound(x)  # grad on, input not requiring grad: a state it was not compiled for runs eager
    assert counter.calls == calls + 3


def test_model_needing_extras_without_them_runs_eager(fake):
    counter = fake()
    model = make_model(PsfNet(), extra_inputs=("psf_code",))
    outcome = Compiler().prepare(model, (1, 3, 8, 8))
    assert not outcome.compiled and counter.compiles == 0 and "without psf_code" in outcome.warning


def test_relative_error():
    reference = torch.tensor([1.0, -2.0, 0.5])
    assert relative_error(reference, reference) == 0.0
    assert relative_error(reference + 2e-4, reference) == pytest.approx(1e-4, rel=1e-3)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0


@pytest.mark.slow  # one real inductor compilation (grad and no-grad graphs): ~20 s of CPU, a minute when shared
def test_real_compile_of_a_tiny_network_equals_eager():
    """torch.compile (inductor) of a small conv net: output and input gradient equal eager within 1e-4
    relative, repeatable bit for bit, and used for both autograd states. Speed is not asserted."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))
    model = make_model(net, pad_multiple=8)
    outcome = Compiler(max_ratio=float("inf"), repeats=1).prepare(model, (2, 3, 12, 16))
    assert outcome.compiled, outcome.reason
    assert outcome.output_error <= 1e-4 and outcome.gradient_error <= 1e-4
    assert outcome.compile_seconds > 0 and outcome.shape == (2, 3, 16, 16)
    x = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = outcome.model(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    eager_out = model(x)
    (eager_grad,) = torch.autograd.grad(eager_out.square().sum(), x)
    assert relative_error(out, eager_out) <= 1e-4 and relative_error(grad, eager_grad) <= 1e-4
    with torch.no_grad():
        assert torch.equal(outcome.model(x), outcome.model(x))
        assert relative_error(outcome.model(x), eager_out) <= 1e-4
        plain = outcome.model(x)
    with torch.inference_mode():  # black-box queries use the inference-mode graph, equal to the no-grad one
        assert relative_error(outcome.model(x), eager_out) <= 1e-4 and torch.equal(outcome.model(x), plain)
