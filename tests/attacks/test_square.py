import math

import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.square import meta_pattern, square_p_schedule
from udcbench.errors import SpecError

from attack_helpers import (CountingModel, LazyWeightedMSE, RecordingModel, assert_usable_by_white_box_attacks,
                            run_attack)


def attack_once(model, degraded, gt, name="square", seed=0, **params):
    return run_attack(name, model, degraded, gt, seed, **params)


def budget(name, adversarial, degraded):
    delta = adversarial - degraded
    return delta.abs().flatten(1).amax(dim=1) if name == "square" else delta.flatten(1).norm(dim=1)


TOLERANCE = {"square": 1e-6, "square-l2": 1e-5}
EPS = {"square": (2 / 255, 8 / 255), "square-l2": (0.25, 1.0)}


def test_registration_and_defaults():
    linf, l2 = make_attack("square"), make_attack("square-l2")
    assert (linf.name, linf.norm, linf.kind) == ("square", "linf", "black-box")
    assert (l2.name, l2.norm, l2.kind) == ("square-l2", "l2", "black-box")
    assert linf.params == {"eps": 8 / 255, "queries": 1000, "p_init": 0.05}
    assert l2.params == {"eps": 1.0, "queries": 1000, "p_init": 0.1}
    assert make_attack("square-l2", eps="0.5").params["eps"] == 0.5


def test_p_schedule_halves_at_the_paper_breakpoints():
    p = 0.05
    at_10000 = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16, 1000: 16, 1001: 32, 2000: 32,
                2001: 64, 4000: 64, 4001: 128, 6000: 128, 6001: 256, 8000: 256, 8001: 512, 9999: 512}
    for iteration, divisor in at_10000.items():
        assert square_p_schedule(p, iteration, 10000) == pytest.approx(p / divisor)
    # rescaled to 1000 queries: breakpoints 1, 5, 20, 50, 100, 200, 400, 600, 800
    at_1000 = {0: 1, 1: 1, 2: 2, 5: 2, 6: 4, 20: 4, 21: 8, 51: 16, 101: 32, 201: 64, 401: 128, 601: 256, 801: 512}
    for iteration, divisor in at_1000.items():
        assert square_p_schedule(p, iteration, 1000) == pytest.approx(p / divisor)
    # 100 queries: 0.1, 0.5 (rounded half up to 1), 2, 5, 10, ... -> iteration 0 at p_init, 1 at p/2, 2 at p/4
    assert [square_p_schedule(p, i, 100) * 8 / p for i in range(4)] == [8, 4, 2, 1]
    values = [square_p_schedule(p, i, 300) for i in range(300)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    assert values[-1] == pytest.approx(p / 512)


def test_meta_pattern_shape():
    for side in (3, 5, 6, 11):
        pattern = meta_pattern(side)
        half = side // 2
        assert pattern.norm().item() == pytest.approx(1.0)
        assert torch.all(pattern[:half] > 0) and torch.all(pattern[half:] < 0)
        if side % 2:
            assert torch.allclose(pattern, pattern.flip(1))  # left-right symmetric about the centre column
        # largest at the centre of each half, decaying outwards
        assert pattern[half + (side - half) // 2, side // 2].abs() == pattern[half:].abs().max()
        assert pattern[half, 0].abs() == pattern[half:].abs().min()


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_stays_in_budget_and_range(tiny_model, images, name):
    degraded, gt = images
    eps = EPS[name][1]
    adversarial, _, _, _ = attack_once(tiny_model, degraded, gt, name=name, eps=eps, queries=60)
    assert adversarial.shape == degraded.shape
    assert torch.all(budget(name, adversarial, degraded) <= eps + TOLERANCE[name])
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_respects_range_at_saturated_pixels(tiny_model, name):
    degraded = torch.zeros(1, 3, 32, 32)
    degraded[..., :16] = 1.0
    eps = EPS[name][1]
    adversarial, after, before, _ = attack_once(tiny_model, degraded, degraded, name=name, eps=eps, queries=60)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert torch.all(budget(name, adversarial, degraded) <= eps + TOLERANCE[name])
    assert torch.all(after >= before)


def test_linf_init_is_vertical_stripes_and_every_value_is_plus_or_minus_eps(tiny_model):
    degraded, eps = torch.full((2, 3, 32, 32), 0.5), 8 / 255  # mid-grey: no clipping
    initial = attack_once(tiny_model, degraded, degraded, eps=eps, queries=2)[0] - degraded
    assert torch.allclose(initial.abs(), torch.full_like(initial, eps), atol=1e-6)
    assert torch.equal(initial, initial[:, :, :1].expand_as(initial))  # constant down each column
    later = attack_once(tiny_model, degraded, degraded, eps=eps, queries=60)[0] - degraded
    assert torch.allclose(later.abs(), torch.full_like(later, eps), atol=1e-6)
    assert not torch.equal(later, later[:, :, :1].expand_as(later))  # squares were accepted


def test_l2_uses_its_whole_budget_without_clipping(tiny_model):
    degraded = torch.full((2, 3, 32, 32), 0.5)
    for queries in (2, 40):
        adversarial = attack_once(tiny_model, degraded, degraded, name="square-l2", eps=1.0, queries=queries)[0]
        assert torch.allclose(budget("square-l2", adversarial, degraded), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_objective_never_drops(tiny_model, images, name):
    degraded, gt = images
    _, after, before, _ = attack_once(tiny_model, degraded, gt, name=name, eps=EPS[name][1], queries=30)
    assert torch.all(after >= before)
    assert after.mean() > 10 * before.mean()


def test_result_is_never_worse_than_no_attack():
    """An objective that is highest at the unperturbed input: every perturbation lowers it, so the attack
    must hand the input back unchanged."""
    degraded = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def closeness(output, reference):
        return -(output - reference).pow(2).flatten(1).mean(dim=1)

    for name in ("square", "square-l2"):
        attack = make_attack(name, queries=20)
        adversarial = attack.perturb(lambda x: x, degraded, closeness, degraded, torch.Generator().manual_seed(0))
        assert torch.equal(adversarial, degraded)
        assert torch.equal(attack.last_queries, torch.full((2,), 20))


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_deterministic_for_a_seed(tiny_model, images, name):
    degraded, gt = images
    a = attack_once(tiny_model, degraded, gt, name=name, seed=5, queries=30)[0]
    b = attack_once(tiny_model, degraded, gt, name=name, seed=5, queries=30)[0]
    c = attack_once(tiny_model, degraded, gt, name=name, seed=6, queries=30)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def mse_clean(model, degraded, gt):
    """The mse-clean objective and its reference (the clean output) for `model` on these images."""
    objective = make_objective("mse-clean")
    with torch.no_grad():
        return objective, objective.reference(model(degraded), gt)


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_query_counts_are_exact(tiny_model, images, name):
    degraded, gt = images
    counting = CountingModel(tiny_model)
    objective, reference = mse_clean(tiny_model, degraded, gt)
    attack = make_attack(name, queries=37)
    attack.perturb(counting, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert attack.last_queries.dtype == torch.int64
    assert torch.equal(attack.last_queries, torch.full((4,), 37))
    assert counting.images == 4 * 37


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_more_queries_and_larger_eps_hurt_more_on_average(tiny_model, images, name):
    degraded, gt = images
    small_eps, large_eps = EPS[name]
    few = attack_once(tiny_model, degraded, gt, name=name, eps=large_eps, queries=20)[1]
    many = attack_once(tiny_model, degraded, gt, name=name, eps=large_eps, queries=200)[1]
    small = attack_once(tiny_model, degraded, gt, name=name, eps=small_eps, queries=200)[1]
    assert many.mean() > few.mean()
    assert many.mean() > small.mean()


def test_beats_random_noise_of_the_same_eps(tiny_model, images):
    degraded, gt = images
    objective = make_objective("mse-clean")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
        eps = 8 / 255
        uniform = (degraded + (2 * torch.rand(degraded.shape, generator=generator) - 1) * eps).clamp(0, 1)
        linf_noise = objective(tiny_model(uniform), reference)
        gaussian = torch.randn(degraded.shape, generator=generator)
        gaussian = gaussian / gaussian.flatten(1).norm(dim=1)[:, None, None, None]
        l2_noise = objective(tiny_model((degraded + gaussian).clamp(0, 1)), reference)
    linf = attack_once(tiny_model, degraded, gt, eps=eps, queries=100)[1]
    l2 = attack_once(tiny_model, degraded, gt, name="square-l2", eps=1.0, queries=200)[1]
    assert linf.mean() > 2 * linf_noise.mean()
    assert l2.mean() > 1.5 * l2_noise.mean()  # Gaussian noise with ‖δ‖₂ = eps


def test_native_pgd_beats_square_at_equal_eps(tiny_model, images):
    degraded, gt = images
    eps = 8 / 255
    pgd = attack_once(tiny_model, degraded, gt, name="pgd", eps=eps, steps=20)[1]
    square = attack_once(tiny_model, degraded, gt, eps=eps, queries=200)[1]
    assert pgd.mean() > square.mean()


@pytest.mark.parametrize("name, params, message", [
    ("square", {"eps": 2.0}, "eps"), ("square", {"eps": 0.0}, "eps"), ("square-l2", {"eps": -1.0}, "positive"),
    ("square", {"queries": 1}, "queries"), ("square-l2", {"queries": 10.5}, "queries"),
    ("square", {"p_init": 0.0}, "p_init"), ("square-l2", {"p_init": 1.5}, "p_init"),
])
def test_rejects_bad_parameters(name, params, message):
    with pytest.raises(SpecError, match=message):
        make_attack(name, **params)


def test_side_stays_inside_the_image(tiny_model):
    """p_init = 1 asks for a square as large as the image: it must shrink to H − 1 and still work."""
    degraded = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    for name in ("square", "square-l2"):
        adversarial = attack_once(tiny_model, degraded, degraded, name=name, p_init=1.0, queries=10)[0]
        assert adversarial.shape == degraded.shape
        assert not math.isnan(adversarial.sum().item())


# --- one forward pass of the whole batch per query, under inference mode ---

def small_batch(images, side=8):
    return tuple(image[..., :side, :side].contiguous() for image in images)


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_every_query_is_one_forward_pass_of_the_whole_batch(tiny_model, images, name):
    degraded, gt = small_batch(images)
    recording = RecordingModel(tiny_model)
    objective, reference = mse_clean(tiny_model, degraded, gt)
    attack = make_attack(name, queries=12)
    attack.perturb(recording, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert recording.calls == [(4, False)] + [(4, True)] * 11  # the unperturbed input first, outside inference mode


@pytest.mark.parametrize("name", ["square", "square-l2"])
def test_inference_mode_leaves_results_and_lazy_state_usable_by_autograd(tiny_model, images, name):
    degraded, gt = small_batch(images)
    objective = LazyWeightedMSE()
    with torch.no_grad():
        reference = tiny_model(degraded).detach()
    attack = make_attack(name, queries=10)
    adversarial = attack.perturb(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert not adversarial.is_inference() and not objective.weight.is_inference()
    assert_usable_by_white_box_attacks(tiny_model, adversarial, objective, reference)


def test_cached_meta_patterns_are_normal_tensors_when_first_built_in_inference_mode():
    meta_pattern.cache_clear()
    with torch.inference_mode():
        built = meta_pattern(9)
    assert not built.is_inference() and built is meta_pattern(9)
    assert torch.equal(built * 1, meta_pattern(9))  # usable outside inference mode
