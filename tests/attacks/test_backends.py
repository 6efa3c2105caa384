"""The cross-check backends (advertorch:pgd, foolbox:pgd) and the acceptance check that native pgd is as strong.

Same start: native pgd draws δ0 = (2u − 1)·eps with u from the passed generator; the backends fork torch's
global RNG and set it to that generator's state, so advertorch's `rand_init` draws the same u (δ0 bit-identical)
and foolbox's random start the same u up to rounding (u·2eps − eps). Every comparison below therefore starts all
three attacks from the same δ0 (test_backends_start_where_native_pgd_starts checks it), with equal eps, alpha and
steps, on the same 4 images; it is repeated without a random start (δ0 = 0 for all). Native pgd keeps its best
iterate, the libraries their last one: the comparison is on the objective each returns.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks import backends
from udcbench.attacks.backends import available, unavailable_reason
from attack_helpers import run_attack as shared_run_attack
from udcbench.errors import MissingExtraError

needs_advertorch = pytest.mark.skipif(not available("advertorch"), reason=f"advertorch:pgd cannot run here: "
                                      f"{unavailable_reason('advertorch')}")
needs_foolbox = pytest.mark.skipif(not available("foolbox"), reason=f"foolbox:pgd cannot run here: "
                                   f"{unavailable_reason('foolbox')}")
BACKENDS = [pytest.param("advertorch:pgd", marks=needs_advertorch), pytest.param("foolbox:pgd", marks=needs_foolbox)]


def run_attack(name, model, degraded, gt, seed=0, **params):
    return shared_run_attack(name, model, degraded, gt, seed, **params)[:2]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_backend_stays_in_budget_and_range(tiny_model, images, name, eps):
    degraded, gt = images
    adversarial, value = run_attack(name, tiny_model, degraded, gt, eps=eps, steps=5)
    assert adversarial.shape == degraded.shape and adversarial.dtype == degraded.dtype
    assert (adversarial - degraded).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    saturated = torch.zeros(1, 3, 32, 32)
    saturated[..., :16] = 1.0
    adversarial, _ = run_attack(name, tiny_model, saturated, saturated, eps=eps, steps=3)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - saturated).abs().max() <= eps + 1e-6


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(tiny_model, images, name):
    degraded, gt = images
    torch.manual_seed(99)
    state = torch.get_rng_state()
    a, _ = run_attack(name, tiny_model, degraded, gt, seed=5, eps=4 / 255, steps=3)
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = run_attack(name, tiny_model, degraded, gt, seed=5, eps=4 / 255, steps=3)
    c, _ = run_attack(name, tiny_model, degraded, gt, seed=6, eps=4 / 255, steps=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", BACKENDS)
def test_backends_start_where_native_pgd_starts(tiny_model, images, name):
    degraded, gt = images
    for seed in (0, 1):
        native, _ = run_attack("pgd", tiny_model, degraded, gt, seed=seed, eps=8 / 255, steps=0)
        library, _ = run_attack(name, tiny_model, degraded, gt, seed=seed, eps=8 / 255, steps=0)
        assert (native - degraded).abs().max() > 7 / 255  # a real random start, not δ0 = 0
        torch.testing.assert_close(library, native, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_defaults_and_metadata(name):
    attack = make_attack(name, eps=8 / 255)
    assert attack.params == {"eps": 8 / 255, "alpha": pytest.approx(2 / 255), "steps": 20, "random_start": True}
    assert attack.norm == "linf" and attack.kind == "white-box (cross-check)"


@needs_advertorch
def test_advertorch_backend_is_advertorch_used_by_hand(tiny_model, images):
    """The wrapper adds nothing to advertorch's algorithm: LinfPGDAttack(model, loss=objective summed) used by
    hand with the import shims of udcbench/attacks/backends.py, with its random start drawn from the same RNG
    state, gives the same images."""
    degraded, gt = images
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    wrapped, _ = run_attack("advertorch:pgd", tiny_model, degraded, gt, seed=3, eps=4 / 255, steps=5)
    LinfPGDAttack = backends._import("advertorch").LinfPGDAttack
    by_hand = LinfPGDAttack(tiny_model, loss_fn=lambda output, ref: objective(output, ref).sum(), eps=4 / 255,
                            nb_iter=5, eps_iter=1 / 255, rand_init=True, clip_min=0.0, clip_max=1.0, targeted=False)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(torch.Generator().manual_seed(3).get_state())
        expected = by_hand.perturb(degraded, reference)
    torch.testing.assert_close(wrapped, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", BACKENDS)
def test_backend_works_under_no_grad_with_a_mask_and_keeps_the_weights_clean(tiny_model, images, name):
    degraded, gt = images
    for parameter in tiny_model.parameters():
        parameter.requires_grad_(True)
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    attack = make_attack(name, eps=8 / 255, steps=3)
    with torch.no_grad():
        adversarial = attack.perturb(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert (adversarial - degraded).abs().max() > 0
    assert all(p.requires_grad and p.grad is None for p in tiny_model.parameters())
    for parameter in tiny_model.parameters():
        parameter.requires_grad_(False)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    masked = attack(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0), mask=mask)
    assert torch.equal((masked - degraded) * (1 - mask), torch.zeros_like(degraded))
    assert (masked - degraded).abs().max() > 0


# --- acceptance: native pgd is as strong as the libraries' PGD --------------------------------------------------

@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
@pytest.mark.parametrize("name", BACKENDS)
def test_native_pgd_reaches_99_percent_of_the_library_objective(tiny_model, images, name, eps, random_start):
    degraded, gt = images
    params = dict(eps=eps, alpha=eps / 4, steps=20, random_start=random_start)
    _, clean = run_attack("pgd", tiny_model, degraded, gt, eps=eps, steps=0, random_start=False)
    for seed in (0, 1) if random_start else (0,):  # without a random start the seed plays no part
        _, native = run_attack("pgd", tiny_model, degraded, gt, seed=seed, **params)
        _, library = run_attack(name, tiny_model, degraded, gt, seed=seed, **params)
        assert library.mean() > 10 * clean.mean()  # the library attack really attacked
        ratio = (native.mean() / library.mean()).item()
        assert ratio >= 0.99, f"native pgd reaches {ratio:.4f} of {name}'s mean objective (eps={eps:.4f}, " \
                              f"random_start={random_start}, seed={seed})"


# --- a missing or broken extra -----------------------------------------------------------------------------------

@pytest.mark.parametrize("library", ["advertorch", "foolbox"])
def test_missing_extra_is_one_line_naming_the_extra(monkeypatch, library):
    for module in [m for m in sys.modules if m.split(".")[0] == library]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, library, None)  # `import library` now fails as if it were not installed
    with pytest.raises(MissingExtraError) as raised:
        make_attack(f"{library}:pgd")
    assert str(raised.value) == (f"{library}:pgd needs {library}; install it with pip install -c constraints.txt "
                                 "'udcbench[xcheck]'")
    assert not available(library)


def test_broken_library_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    (tmp_path / "foolbox").mkdir()
    (tmp_path / "foolbox" / "__init__.py").write_text("raise RuntimeError('CUDA build on a CPU torch\\nmore')\n")
    for module in [m for m in sys.modules if m.split(".")[0] == "foolbox"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtraError) as raised:
        make_attack("foolbox:pgd")
    message = str(raised.value)
    assert "\n" not in message
    assert "RuntimeError: CUDA build on a CPU torch" in message
    assert "pip install -c constraints.txt 'udcbench[xcheck]'" in message


def test_advertorch_shims_are_scoped():
    gradcheck = sys.modules["torch.autograd.gradcheck"]
    had_zero_gradients = hasattr(gradcheck, "zero_gradients")
    torchvision_before = sys.modules.get("torchvision")
    with backends._advertorch_shims():
        from torch.autograd.gradcheck import zero_gradients
        from torchvision import transforms

        x = torch.ones(2, requires_grad=True)
        x.sum().backward()
        zero_gradients(x)
        assert torch.equal(x.grad, torch.zeros(2))
        transforms.ToTensor()
    assert hasattr(gradcheck, "zero_gradients") == had_zero_gradients
    assert sys.modules.get("torchvision") is torchvision_before


def test_importing_the_module_imports_neither_library():
    code = ("import sys, udcbench.attacks.backends; "
            "assert not {'advertorch', 'foolbox', 'eagerpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
