"""Shared by the attack tests: run one attack on the mse-clean objective, and count objective evaluations."""

import torch

from udcbench.attacks import make_attack, make_objective


class RecordingModel(torch.nn.Module):
    """Records, per call, the batch size and whether inference mode was on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_inference_mode_enabled()))
        return self.model(x)


class LazyWeightedMSE:
    """An objective that builds a tensor on its first call and keeps it (as LPIPS loads its weights)."""

    uses_clean_output = True

    def __init__(self):
        self.weight = None

    def __call__(self, output, reference):
        if self.weight is None:
            self.weight = torch.linspace(0.5, 1.5, output.shape[1])[None, :, None, None]
        return ((output - reference) * self.weight).pow(2).flatten(1).mean(dim=1)


def assert_usable_by_white_box_attacks(model, adversarial, objective, reference):
    """A black-box result (made under inference mode) and the objective it used work with autograd afterwards."""
    pgd = make_attack("pgd", eps=4 / 255, steps=2)
    assert pgd.perturb(model, adversarial, objective, reference, torch.Generator().manual_seed(0)).shape \
        == adversarial.shape
    adversarial.requires_grad_(True)
    objective(model(adversarial), reference).sum().backward()
    assert adversarial.grad is not None


class CountingModel(torch.nn.Module):
    """Counts the images the attack evaluates (one query per image)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.model(x)


def run_attack(name, model, degraded, gt, seed=0, **params):
    """(adversarial, objective after, objective before, attack) for attack `name` on the mse-clean objective."""
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt)
        before = objective(model(degraded), reference)
    attack = make_attack(name, **params)
    adversarial = attack.perturb(model, degraded, objective, reference, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        after = objective(model(adversarial), reference)
    return adversarial, after, before, attack


def attack_once(name, model, degraded, gt, seed=0, **params):
    """(adversarial, objective after, objective before), per image."""
    return run_attack(name, model, degraded, gt, seed, **params)[:3]


def assert_every_evaluation_goes_through_value(attack, model, degraded, gt):
    """Each model call of the attack happens inside `attack.value` (so EOT can replace it)."""
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt)
    calls = {"value": 0, "model": 0}
    original = attack.value

    def counted_value(*args, **kwargs):
        calls["value"] += 1
        return original(*args, **kwargs)

    def counted_model(x):
        calls["model"] += 1
        return model(x)

    attack.value = counted_value
    attack.perturb(counted_model, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert calls["value"] > 0 and calls["model"] == calls["value"]
