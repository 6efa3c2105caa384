"""Invariants that every registered attack keeps: output inside its budget and [0, 1], the same result for a
seed, an objective never below the unperturbed input's, query counts for black-box attacks, masks honoured."""

import pytest
import torch

from lpips_files import write_weights
from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.backends import available
from udcbench.metrics import lpips as lpips_module
from udcbench.registry import ATTACKS

# small budgets so the whole sweep stays fast; each attack's own tests use its defaults where it matters
FAST = {"fgsm": {}, "ifgsm": {"steps": 4}, "pgd": {"steps": 4}, "pgd-l2": {"steps": 4, "eps": 0.5},
        "mifgsm": {"steps": 4}, "difgsm": {"steps": 4}, "cw": {"steps": 10, "search_steps": 2},
        "lpips-pgd": {"steps": 2}, "simba": {"iterations": 40}, "square": {"queries": 30},
        "square-l2": {"queries": 30, "eps": 0.5}, "transfer": {"steps": 3},
        "advertorch:pgd": {"steps": 4}, "foolbox:pgd": {"steps": 4}}


def attack_names():
    names = []
    for name in ATTACKS.names():
        library = name.split(":")[0] if ":" in name else None
        marks = [pytest.mark.skipif(not available(library), reason=f"{library} is not installed (extra xcheck)")] \
            if library else []
        names.append(pytest.param(name, marks=marks))
    return names


def test_every_registered_attack_is_covered():
    assert sorted(FAST) == ATTACKS.names()


@pytest.fixture
def lpips_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(write_weights(tmp_path / "lpips", "alex")))
    monkeypatch.setattr(lpips_module, "_lpips_package_weights", lambda: [])
    monkeypatch.setattr(lpips_module, "_CACHE", {})


def run(name, model, degraded, gt, seed=0, mask=None):
    attack = make_attack(name, **FAST[name])
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt, degraded)
    adversarial = attack(model, degraded, objective, reference, torch.Generator().manual_seed(seed), mask=mask)
    return attack, adversarial, objective, reference


@pytest.mark.parametrize("name", attack_names())
def test_budget_range_determinism_and_monotone_objective(name, tiny_model, images, lpips_weights):
    degraded, gt = images
    degraded = degraded.clone()
    degraded[0, :, :8] = 1.0  # saturated pixels must stay in range
    degraded[1, :, -8:] = 0.0
    attack, adversarial, objective, reference = run(name, tiny_model, degraded, gt)
    assert adversarial.shape == degraded.shape and adversarial.dtype == degraded.dtype
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    delta = (adversarial - degraded).flatten(1)
    eps = attack.params.get("eps")
    if attack.norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    elif attack.norm == "l2" and eps is not None:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    with torch.no_grad():
        before = objective(tiny_model(degraded), reference)
        after = objective(tiny_model(adversarial), reference)
    assert torch.all(after >= before - 1e-7)
    if name != "transfer":  # crafted on the surrogate: no guarantee per image on the target
        assert after.mean() > before.mean()
    _, again, _, _ = run(name, tiny_model, degraded, gt)
    assert torch.equal(again, adversarial)
    if attack.kind.startswith("black-box"):
        assert attack.last_queries is not None and attack.last_queries.shape == (4,)
        assert attack.last_queries.dtype == torch.int64


@pytest.mark.parametrize("name", attack_names())
def test_mask_confines_every_attack(name, tiny_model, images, lpips_weights):
    degraded, gt = images
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 10:30] = 1
    _, adversarial, _, _ = run(name, tiny_model, degraded[:2], gt[:2], mask=mask)
    assert ((adversarial - degraded[:2]) * (1 - mask)).abs().max() == 0
