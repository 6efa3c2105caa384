import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.simba import dct_matrix
from udcbench.errors import SpecError

from attack_helpers import CountingModel, run_attack


def attack_once(model, degraded, gt, seed=0, name="simba", **params):
    return run_attack(name, model, degraded, gt, seed, **params)


def uniform_noise_value(model, degraded, gt, eps, seed=3):
    objective = make_objective("mse-clean")
    generator = torch.Generator().manual_seed(seed)
    noisy = (degraded + (2 * torch.rand(degraded.shape, generator=generator) - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        return objective(model(noisy), objective.reference(model(degraded), gt))


def test_registration_and_defaults():
    attack = make_attack("simba")
    assert (attack.name, attack.norm, attack.kind) == ("simba", "linf", "black-box")
    assert attack.params == {"eps": 4 / 255, "iterations": 1000, "basis": "pixel", "freq_dims": None,
                             "order": "random"}


@pytest.mark.parametrize("params", [{"basis": "pixel"}, {"basis": "dct"}, {"basis": "dct", "freq_dims": 32}])
def test_stays_in_budget_and_range(tiny_model, images, params):
    degraded, gt = images
    eps = 8 / 255
    adversarial, _, _, _ = attack_once(tiny_model, degraded, gt, eps=eps, iterations=60, **params)
    assert adversarial.shape == degraded.shape
    assert (adversarial - degraded).abs().max().item() <= eps + 1e-6
    assert adversarial.min().item() >= 0.0 and adversarial.max().item() <= 1.0


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_respects_range_at_saturated_pixels(tiny_model, basis):
    degraded = torch.zeros(1, 3, 32, 32)
    degraded[..., :16] = 1.0
    adversarial, after, before, _ = attack_once(tiny_model, degraded, degraded, eps=8 / 255, iterations=60,
                                                basis=basis, freq_dims=8 if basis == "dct" else None)
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - degraded).abs().max() <= 8 / 255 + 1e-6
    assert torch.all(after >= before)


def test_pixel_basis_moves_each_coordinate_at_most_once_by_eps(tiny_model, images):
    degraded, gt = images
    eps = 4 / 255
    adversarial, _, _, _ = attack_once(tiny_model, degraded, gt, eps=eps, iterations=80)
    delta = (adversarial - degraded).flatten(1)
    moved = delta.abs() > 1e-7
    assert torch.all(moved.sum(dim=1) <= 80)  # one coordinate per iteration at most
    assert torch.allclose(delta[moved].abs(), torch.full_like(delta[moved], eps), atol=1e-6)  # no clipping here


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_objective_never_drops(tiny_model, images, basis):
    degraded, gt = images
    _, after, before, _ = attack_once(tiny_model, degraded, gt, eps=4 / 255, iterations=60, basis=basis)
    assert torch.all(after >= before)
    assert after.mean() > 10 * before.mean()


def test_deterministic_for_a_seed(tiny_model, images):
    degraded, gt = images
    for basis in ("pixel", "dct"):
        a = attack_once(tiny_model, degraded, gt, seed=5, eps=4 / 255, iterations=30, basis=basis)[0]
        b = attack_once(tiny_model, degraded, gt, seed=5, eps=4 / 255, iterations=30, basis=basis)[0]
        c = attack_once(tiny_model, degraded, gt, seed=6, eps=4 / 255, iterations=30, basis=basis)[0]
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_query_counts_are_exact(tiny_model, images):
    degraded, gt = images
    iterations = 80
    counting = CountingModel(tiny_model)
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    attack = make_attack("simba", eps=4 / 255, iterations=iterations)
    attack.perturb(counting, degraded, objective, reference, torch.Generator().manual_seed(0))
    queries = attack.last_queries
    assert queries.dtype == torch.int64 and queries.shape == (4,)
    assert torch.all(queries >= iterations + 1) and torch.all(queries <= 2 * iterations + 1)
    assert counting.images == queries.sum().item()


def test_dct_stops_when_its_frequencies_are_used_up(tiny_model, images):
    degraded, gt = images
    _, _, _, attack = attack_once(tiny_model, degraded, gt, eps=4 / 255, iterations=1000, basis="dct")
    directions = 3 * (32 // 8) ** 2  # default freq_dims = 32 // 8
    assert torch.all(attack.last_queries <= 2 * directions + 1)
    assert torch.all(attack.last_queries >= directions + 1)


def test_dct_matrix_is_orthonormal():
    for size in (1, 7, 32):
        matrix = dct_matrix(size, torch.float64)
        assert torch.allclose(matrix @ matrix.T, torch.eye(size, dtype=torch.float64), atol=1e-12)


def test_fixed_order_is_deterministic_without_randomness(tiny_model, images):
    degraded, gt = images
    a = attack_once(tiny_model, degraded, gt, seed=1, eps=4 / 255, iterations=30, order="fixed")[0]
    b = attack_once(tiny_model, degraded, gt, seed=2, eps=4 / 255, iterations=30, order="fixed")[0]
    assert torch.equal(a, b)
    moved = (a - degraded).abs().flatten(1) > 1e-7
    assert not moved[:, 30:].any()  # raster order: only the first 30 coordinates


def crop(images, side=16):
    """The top-left side×side corner: the pixel basis needs ~C·H·W/3 iterations to beat noise, so keep it small."""
    return tuple(image[..., :side, :side].contiguous() for image in images)


def test_beats_uniform_noise_of_the_same_eps(tiny_model, images):
    eps = 8 / 255
    degraded, gt = crop(images)
    pixel = attack_once(tiny_model, degraded, gt, eps=eps, iterations=300)[1]
    assert pixel.mean() > 2 * uniform_noise_value(tiny_model, degraded, gt, eps).mean()
    degraded, gt = images
    dct = attack_once(tiny_model, degraded, gt, eps=eps, iterations=100, basis="dct", freq_dims=16)[1]
    assert dct.mean() > 2 * uniform_noise_value(tiny_model, degraded, gt, eps).mean()


def test_native_pgd_beats_simba_at_equal_eps(tiny_model, images):
    eps = 8 / 255
    degraded, gt = crop(images)
    pgd = attack_once(tiny_model, degraded, gt, name="pgd", eps=eps, steps=20)[1]
    pixel = attack_once(tiny_model, degraded, gt, eps=eps, iterations=300)[1]
    assert pgd.mean() > pixel.mean()
    degraded, gt = images
    pgd = attack_once(tiny_model, degraded, gt, name="pgd", eps=eps, steps=20)[1]
    dct = attack_once(tiny_model, degraded, gt, eps=eps, iterations=100, basis="dct", freq_dims=16)[1]
    assert pgd.mean() > dct.mean()


@pytest.mark.parametrize("params, message", [
    ({"eps": 0.0}, "eps"), ({"eps": 2.0}, "eps"), ({"iterations": -1}, "iterations"),
    ({"iterations": 2.5}, "iterations"), ({"basis": "wavelet"}, "pixel, dct"), ({"order": "strided"}, "random"),
    ({"freq_dims": 4}, "basis='dct'"), ({"basis": "dct", "freq_dims": 0}, "freq_dims"),
])
def test_rejects_bad_parameters(params, message):
    with pytest.raises(SpecError, match=message):
        make_attack("simba", **params)
