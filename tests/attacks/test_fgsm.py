import pytest
import torch

from udcbench.attacks import make_attack
from udcbench.errors import SpecError

from attack_helpers import assert_every_evaluation_goes_through_value, attack_once


@pytest.mark.parametrize("name", ["fgsm", "ifgsm"])
@pytest.mark.parametrize("eps", [1 / 255, 8 / 255])
def test_stays_in_budget_and_range(tiny_model, images, name, eps):
    degraded, gt = images
    params = {"eps": eps} if name == "fgsm" else {"eps": eps, "steps": 5}
    adversarial, _, _ = attack_once(name, tiny_model, degraded, gt, **params)
    assert adversarial.shape == degraded.shape
    assert (adversarial - degraded).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0


@pytest.mark.parametrize("name", ["fgsm", "ifgsm"])
def test_saturated_pixels_stay_in_range(tiny_model, name):
    degraded = torch.zeros(1, 3, 32, 32)
    degraded[..., :16] = 1.0
    degraded[..., 16:20] = 0.5
    params = {"eps": 8 / 255} if name == "fgsm" else {"eps": 8 / 255, "steps": 3}
    adversarial, _, _ = attack_once(name, tiny_model, degraded, degraded, **params)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - degraded).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize("name", ["fgsm", "ifgsm"])
def test_raises_the_objective_and_is_deterministic(tiny_model, images, name):
    degraded, gt = images
    params = {"eps": 4 / 255} if name == "fgsm" else {"eps": 4 / 255, "steps": 5}
    a, value, before = attack_once(name, tiny_model, degraded, gt, seed=1, **params)
    b, _, _ = attack_once(name, tiny_model, degraded, gt, seed=2, **params)  # no randomness at all
    assert torch.all(value >= before)
    assert value.mean() > 10 * before.mean()
    assert torch.equal(a, b)


def test_fgsm_takes_one_full_sign_step(tiny_model, images):
    degraded, gt = images
    degraded = degraded.clamp(0.1, 0.9)  # away from the range limits: every pixel moves by exactly eps
    adversarial, value, before = attack_once("fgsm", tiny_model, degraded, gt, eps=4 / 255)
    moved = (adversarial - degraded).abs()
    improved = value > before
    assert improved.any()
    assert torch.allclose(moved[improved], torch.full_like(moved[improved], 4 / 255), atol=1e-6)


def test_ifgsm_more_steps_never_hurt_less(tiny_model, images):
    degraded, gt = images
    values = [attack_once("ifgsm", tiny_model, degraded, gt, eps=4 / 255, steps=s)[1] for s in (0, 1, 3, 8)]
    for fewer, more in zip(values, values[1:]):  # a fixed alpha and no random start: the same path, longer
        assert torch.all(more >= fewer - 1e-12)
    assert values[-1].mean() > values[1].mean()


def test_ifgsm_larger_eps_hurts_more_on_average(tiny_model, images):
    degraded, gt = images
    small = attack_once("ifgsm", tiny_model, degraded, gt, eps=2 / 255, steps=8)[1]
    large = attack_once("ifgsm", tiny_model, degraded, gt, eps=8 / 255, steps=8)[1]
    assert large.mean() > small.mean()


def test_fgsm_is_no_stronger_than_ifgsm(tiny_model, images):
    degraded, gt = images
    for eps in (2 / 255, 8 / 255):
        single = attack_once("fgsm", tiny_model, degraded, gt, eps=eps)[1]
        iterative = attack_once("ifgsm", tiny_model, degraded, gt, eps=eps, steps=10)[1]
        assert single.mean() <= iterative.mean()


def test_every_evaluation_goes_through_value(tiny_model, images):
    degraded, gt = images
    for name in ("fgsm", "ifgsm"):
        attack = make_attack(name, eps=4 / 255) if name == "fgsm" else make_attack(name, steps=3)
        assert_every_evaluation_goes_through_value(attack, tiny_model, degraded, gt)


def test_defaults_and_validation():
    fgsm = make_attack("fgsm")
    assert fgsm.params == {"eps": pytest.approx(8 / 255)}
    ifgsm = make_attack("ifgsm")
    assert ifgsm.params["alpha"] == pytest.approx(1 / 255) and ifgsm.params["steps"] == 20
    assert make_attack("ifgsm", eps="4/255").params["eps"] == pytest.approx(4 / 255)
    assert (fgsm.name, fgsm.norm, fgsm.kind) == ("fgsm", "linf", "white-box")
    with pytest.raises(SpecError, match="eps"):
        make_attack("fgsm", eps=2.0)
    with pytest.raises(SpecError, match="alpha"):
        make_attack("ifgsm", alpha=-1.0)
    with pytest.raises(SpecError, match="steps"):
        make_attack("ifgsm", steps=-1)
    with pytest.raises(SpecError, match="alpha"):
        make_attack("fgsm", alpha=0.1)  # fgsm has no step size
