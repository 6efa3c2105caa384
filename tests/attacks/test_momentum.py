import pytest
import torch

from udcbench.attacks import make_attack
from udcbench.attacks.base import cpu_rand
from udcbench.attacks.momentum import DiverseModel, diversify, draw_geometry, undiversify
from udcbench.errors import SpecError

from attack_helpers import assert_every_evaluation_goes_through_value, attack_once


@pytest.mark.parametrize("name", ["mifgsm", "difgsm"])
@pytest.mark.parametrize("eps", [1 / 255, 8 / 255])
def test_stays_in_budget_and_range(tiny_model, images, name, eps):
    degraded, gt = images
    adversarial, _, _ = attack_once(name, tiny_model, degraded, gt, eps=eps, steps=5)
    assert adversarial.shape == degraded.shape
    assert (adversarial - degraded).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0


@pytest.mark.parametrize("name", ["mifgsm", "difgsm"])
def test_saturated_pixels_stay_in_range(tiny_model, name):
    degraded = torch.zeros(1, 3, 32, 32)
    degraded[..., :16] = 1.0
    adversarial, _, _ = attack_once(name, tiny_model, degraded, degraded, eps=8 / 255, steps=4)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - degraded).abs().max() <= 8 / 255 + 1e-6


@pytest.mark.parametrize("name", ["mifgsm", "difgsm"])
def test_raises_the_objective_and_is_deterministic(tiny_model, images, name):
    degraded, gt = images
    a, value, before = attack_once(name, tiny_model, degraded, gt, seed=4, eps=4 / 255, steps=6)
    b, _, _ = attack_once(name, tiny_model, degraded, gt, seed=4, eps=4 / 255, steps=6)
    assert torch.all(value >= before)
    assert value.mean() > 10 * before.mean()
    assert torch.equal(a, b)


def test_difgsm_draws_depend_on_the_seed_mifgsm_has_none(tiny_model, images):
    degraded, gt = images
    params = {"eps": 4 / 255, "steps": 4}
    assert torch.equal(attack_once("mifgsm", tiny_model, degraded, gt, seed=1, **params)[0],
                       attack_once("mifgsm", tiny_model, degraded, gt, seed=2, **params)[0])
    assert not torch.equal(attack_once("difgsm", tiny_model, degraded, gt, seed=1, **params)[0],
                           attack_once("difgsm", tiny_model, degraded, gt, seed=2, **params)[0])


def test_mifgsm_more_steps_and_larger_eps_hurt_more_on_average(tiny_model, images):
    degraded, gt = images
    means = [attack_once("mifgsm", tiny_model, degraded, gt, eps=4 / 255, steps=s)[1].mean() for s in (1, 5, 15)]
    assert means[0] <= means[1] <= means[2]
    small = attack_once("mifgsm", tiny_model, degraded, gt, eps=2 / 255, steps=10)[1]
    large = attack_once("mifgsm", tiny_model, degraded, gt, eps=8 / 255, steps=10)[1]
    assert large.mean() > small.mean()


def test_zero_decay_is_ifgsm_with_the_same_step(tiny_model, images):
    degraded, gt = images
    momentum = attack_once("mifgsm", tiny_model, degraded, gt, eps=4 / 255, steps=5, decay=0.0)[0]
    plain = attack_once("ifgsm", tiny_model, degraded, gt, eps=4 / 255, alpha=4 / 255 / 5, steps=5)[0]
    assert torch.equal(momentum, plain)  # sign(∇/‖∇‖₁) = sign(∇)


def test_difgsm_without_diversity_is_mifgsm(tiny_model, images):
    degraded, gt = images
    diverse = attack_once("difgsm", tiny_model, degraded, gt, eps=4 / 255, steps=4, probability=0.0)[0]
    momentum = attack_once("mifgsm", tiny_model, degraded, gt, eps=4 / 255, steps=4)[0]
    assert torch.equal(diverse, momentum)


def test_diversity_is_identity_when_the_draw_says_so(tiny_model, images):
    degraded, _ = images
    assert draw_geometry(torch.tensor([0.5, 0.3, 0.2, 0.9]), (32, 32), 0.5, 1.1) is None  # draw ≥ p
    assert draw_geometry(torch.tensor([0.49, 0.3, 0.2, 0.9]), (32, 32), 0.5, 1.1) is not None
    wrapped = DiverseModel(tiny_model, torch.Generator().manual_seed(0), probability=0.0, resize_rate=1.1)
    with torch.no_grad():
        assert torch.equal(wrapped(degraded), tiny_model(degraded))


def test_geometry_follows_the_paper_ranges():
    generator = torch.Generator().manual_seed(0)
    heights = set()
    for _ in range(200):
        g = draw_geometry(torch.rand(4, generator=generator) * torch.tensor([0.5, 1, 1, 1]), (40, 60), 0.5, 1.1)
        assert g.canvas_height == 44 and g.canvas_width == 66
        assert 40 <= g.height < 44 and 60 <= g.width <= 66
        assert 0 <= g.top <= 44 - g.height and 0 <= g.left <= 66 - g.width
        heights.add(g.height)
    assert heights == {40, 41, 42, 43}


@pytest.mark.parametrize("size", [(32, 32), (29, 47)])
def test_geometry_round_trip_on_an_identity_model(size):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, *size, generator=generator)
    for scale in (0.0, 0.3, 0.6, 0.999):
        for offset in (0.0, 0.5, 0.999):
            geometry = draw_geometry(torch.tensor([0.0, scale, offset, 1 - offset]), size, 0.5, 1.1)
            transformed = diversify(image, geometry)
            assert transformed.shape[-2:] == (geometry.canvas_height, geometry.canvas_width)
            assert torch.allclose(undiversify(transformed, geometry, size), image, atol=1e-6)
    identity = DiverseModel(lambda x: x, generator, probability=1.0, resize_rate=1.1)
    for _ in range(10):
        assert torch.allclose(identity(image), image, atol=1e-6)


def test_diversity_is_differentiable(tiny_model, images):
    degraded, _ = images
    x = degraded.clone().requires_grad_(True)
    wrapped = DiverseModel(tiny_model, torch.Generator().manual_seed(0), probability=1.0, resize_rate=1.1)
    wrapped(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_every_evaluation_goes_through_value(tiny_model, images):
    degraded, gt = images
    for name in ("mifgsm", "difgsm"):
        assert_every_evaluation_goes_through_value(make_attack(name, steps=3), tiny_model, degraded, gt)


def test_defaults_and_validation():
    attack = make_attack("mifgsm")
    assert attack.params == {"eps": pytest.approx(8 / 255), "alpha": pytest.approx(8 / 255 / 20), "steps": 20,
                             "decay": 1.0}
    diverse = make_attack("difgsm")
    assert diverse.params["probability"] == 0.5 and diverse.params["resize_rate"] == 1.1
    assert diverse.params["decay"] == 1.0
    assert (diverse.name, diverse.norm, diverse.kind) == ("difgsm", "linf", "white-box")
    for name, bad in (("mifgsm", {"eps": 0.0}), ("mifgsm", {"decay": -1.0}), ("mifgsm", {"steps": 1.5}),
                      ("difgsm", {"probability": 1.5}), ("difgsm", {"resize_rate": 0.9}),
                      ("difgsm", {"alpha": -0.1})):
        with pytest.raises(SpecError):
            make_attack(name, **bad)


def test_a_mask_restriction_comes_before_the_transform(tiny_model, images):
    degraded, _ = images
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1

    def restricted(x):  # the shape of Attack.__call__'s mask wrapper, with the two hooks DI needs
        return tiny_model(degraded + mask * (x - degraded))

    restricted.restrict = lambda x: degraded + mask * (x - degraded)
    restricted.unrestricted = tiny_model
    x = torch.rand(degraded.shape, generator=torch.Generator().manual_seed(2))
    draws = cpu_rand((4,), torch.Generator().manual_seed(5), x)
    geometry = draw_geometry(draws, (32, 32), 1.0, 1.1)
    wrapped = DiverseModel(restricted, torch.Generator().manual_seed(5), probability=1.0, resize_rate=1.1)
    with torch.no_grad():
        expected = undiversify(tiny_model(diversify(restricted.restrict(x), geometry)), geometry, (32, 32))
        assert torch.equal(wrapped(x), expected)
