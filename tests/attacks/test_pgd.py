import pytest
import torch

from udcbench.attacks import make_attack, make_objective, parse_eps
from udcbench.errors import SpecError, UnknownNameError


def attack_once(model, degraded, gt, seed=0, **params):
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt)
    attack = make_attack("pgd", **params)
    adversarial = attack.perturb(model, degraded, objective, reference, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        value = objective(model(adversarial), reference)
    return adversarial, value, objective, reference


@pytest.mark.parametrize("eps", [1 / 255, 4 / 255, 8 / 255])
def test_pgd_stays_in_budget_and_range(tiny_model, images, eps):
    degraded, gt = images
    adversarial, _, _, _ = attack_once(tiny_model, degraded, gt, eps=eps, steps=5)
    assert (adversarial - degraded).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0
    assert adversarial.shape == degraded.shape


def test_pgd_respects_range_at_saturated_pixels(tiny_model):
    degraded = torch.zeros(1, 3, 32, 32)
    degraded[..., :16] = 1.0
    adversarial, _, _, _ = attack_once(tiny_model, degraded, degraded, eps=8 / 255, steps=3)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - degraded).abs().max() <= 8 / 255 + 1e-6


def test_pgd_raises_the_objective(tiny_model, images):
    degraded, gt = images
    _, value, objective, reference = attack_once(tiny_model, degraded, gt, eps=4 / 255, steps=10)
    with torch.no_grad():
        before = objective(tiny_model(degraded), reference)
    assert torch.all(value >= before)
    assert value.mean() > 10 * before.mean()


def test_pgd_hurts_more_than_uniform_noise_of_the_same_eps(tiny_model, images):
    degraded, gt = images
    eps = 8 / 255
    _, value, objective, reference = attack_once(tiny_model, degraded, gt, eps=eps, steps=10)
    generator = torch.Generator().manual_seed(3)
    noisy = (degraded + (2 * torch.rand(degraded.shape, generator=generator) - 1) * eps).clamp(0, 1)
    sign_noise = (degraded + eps * torch.sign(torch.rand(degraded.shape, generator=generator) - 0.5)).clamp(0, 1)
    with torch.no_grad():
        for random_input in (noisy, sign_noise):
            random_value = objective(tiny_model(random_input), reference)
            assert torch.all(value > 2 * random_value)


def test_more_steps_never_hurt_less(tiny_model, images):
    degraded, gt = images
    values = [attack_once(tiny_model, degraded, gt, eps=4 / 255, steps=s)[1] for s in (0, 1, 5, 10, 20)]
    for fewer, more in zip(values, values[1:]):
        assert torch.all(more >= fewer - 1e-12)
    assert values[-1].mean() > values[1].mean()


def test_larger_eps_hurts_more_on_average(tiny_model, images):
    degraded, gt = images
    small = attack_once(tiny_model, degraded, gt, eps=2 / 255, steps=10)[1]
    large = attack_once(tiny_model, degraded, gt, eps=8 / 255, steps=10)[1]
    assert large.mean() > small.mean()


def test_same_seed_same_result_other_seed_other_start(tiny_model, images):
    degraded, gt = images
    a = attack_once(tiny_model, degraded, gt, seed=5, eps=4 / 255, steps=3)[0]
    b = attack_once(tiny_model, degraded, gt, seed=5, eps=4 / 255, steps=3)[0]
    c = attack_once(tiny_model, degraded, gt, seed=6, eps=4 / 255, steps=3)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_alpha_defaults_to_a_quarter_of_eps():
    attack = make_attack("pgd", eps=8 / 255)
    assert attack.params["alpha"] == pytest.approx(2 / 255)
    assert attack.params["steps"] == 20


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.0314", 0.0314), ("1", 1.0)])
def test_parse_eps(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["-1", "0", "2", "abc", "1/0"])
def test_parse_eps_rejects_bad_values(text):
    with pytest.raises(SpecError):
        parse_eps(text)


def test_make_attack_rejects_unknown_names_and_params():
    with pytest.raises(UnknownNameError, match="pgd"):
        make_attack("nosuch")
    with pytest.raises(SpecError, match="epsilon"):
        make_attack("pgd", epsilon=0.1)
