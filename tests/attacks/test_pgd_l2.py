import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.pgd_l2 import uniform_l2_ball
from udcbench.errors import SpecError

from attack_helpers import attack_once as named_attack_once


def attack_once(model, degraded, gt, seed=0, **params):
    return named_attack_once("pgd-l2", model, degraded, gt, seed, **params)


def l2(delta):
    return delta.flatten(1).norm(dim=1)


@pytest.mark.parametrize("eps", [0.25, 1.0, 3.0])
def test_stays_in_budget_and_range(tiny_model, images, eps):
    degraded, gt = images
    adversarial, _, _ = attack_once(tiny_model, degraded, gt, eps=eps, steps=5)
    assert adversarial.shape == degraded.shape
    assert torch.all(l2(adversarial - degraded) <= eps + 1e-5)
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0


def test_saturated_pixels_stay_in_range(tiny_model):
    degraded = torch.zeros(2, 3, 32, 32)
    degraded[..., :16] = 1.0
    adversarial, _, _ = attack_once(tiny_model, degraded, degraded, eps=2.0, steps=3, restarts=2)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.all(l2(adversarial - degraded) <= 2.0 + 1e-5)


def test_random_start_is_in_the_ball_and_near_its_surface():
    like = torch.zeros(3, 3, 32, 32)
    a = uniform_l2_ball(like, 0.5, torch.Generator().manual_seed(0))
    b = uniform_l2_ball(like, 0.5, torch.Generator().manual_seed(0))
    norms = l2(a)
    assert torch.equal(a, b)
    assert torch.all(norms <= 0.5 + 1e-6) and torch.all(norms > 0.49)  # radius eps·U^(1/3072)
    assert a.mean().abs() < 1e-3 and (a > 0).float().mean().sub(0.5).abs() < 0.02  # centred, symmetric


def test_raises_the_objective_and_beats_random_noise_of_the_same_norm(tiny_model, images):
    degraded, gt = images
    _, value, before = attack_once(tiny_model, degraded, gt, eps=0.5, steps=10)
    assert torch.all(value >= before)
    assert value.mean() > 10 * before.mean()
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
        noisy = (degraded + uniform_l2_ball(degraded, 0.5, torch.Generator().manual_seed(3))).clamp(0, 1)
        assert torch.all(value > 2 * objective(tiny_model(noisy), reference))


def test_same_seed_same_result_other_seed_other_start(tiny_model, images):
    degraded, gt = images
    a = attack_once(tiny_model, degraded, gt, seed=5, eps=0.5, steps=3)[0]
    b = attack_once(tiny_model, degraded, gt, seed=5, eps=0.5, steps=3)[0]
    c = attack_once(tiny_model, degraded, gt, seed=6, eps=0.5, steps=3)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_more_steps_never_hurt_less(tiny_model, images):
    degraded, gt = images
    # default alpha (2.5·eps/steps) changes with steps: compare means
    means = [attack_once(tiny_model, degraded, gt, eps=0.5, steps=s)[1].mean() for s in (1, 5, 20)]
    assert means[0] <= means[1] <= means[2]
    # a fixed alpha and the same seed: the same path, longer, so per image
    values = [attack_once(tiny_model, degraded, gt, eps=0.5, alpha=0.05, steps=s)[1] for s in (0, 2, 6)]
    for fewer, more in zip(values, values[1:]):
        assert torch.all(more >= fewer - 1e-12)


def test_larger_eps_hurts_more_on_average(tiny_model, images):
    degraded, gt = images
    small = attack_once(tiny_model, degraded, gt, eps=0.25, steps=10)[1]
    large = attack_once(tiny_model, degraded, gt, eps=1.0, steps=10)[1]
    assert large.mean() > small.mean()


def test_restarts_keep_the_strongest(tiny_model, images):
    degraded, gt = images
    one = attack_once(tiny_model, degraded, gt, seed=0, eps=0.5, steps=3, restarts=1)[1]
    three = attack_once(tiny_model, degraded, gt, seed=0, eps=0.5, steps=3, restarts=3)[1]
    assert torch.all(three >= one - 1e-12)  # the first restart is the single run


def test_defaults_and_validation():
    attack = make_attack("pgd-l2")
    assert attack.params == {"eps": 1.0, "alpha": pytest.approx(2.5 / 20), "steps": 20, "random_start": True,
                             "restarts": 1}
    assert make_attack("pgd-l2", eps=2.0, steps=10).params["alpha"] == pytest.approx(0.5)
    assert make_attack("pgd-l2", eps="3").params["eps"] == 3.0  # an L2 eps may exceed 1
    assert (attack.name, attack.norm, attack.kind) == ("pgd-l2", "l2", "white-box")
    for bad in ({"eps": 0.0}, {"eps": -1.0}, {"alpha": 0.0}, {"steps": -2}, {"restarts": 0}):
        with pytest.raises(SpecError):
            make_attack("pgd-l2", **bad)
