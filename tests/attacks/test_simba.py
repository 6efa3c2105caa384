import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.simba import dct_matrix, shell_index
from udcbench.errors import SpecError

from attack_helpers import (CountingModel, LazyWeightedMSE, RecordingModel, assert_usable_by_white_box_attacks,
                            run_attack)


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
                             "order": "random"}  # no stride: pixel runs keep their parameters and run hashes
    assert make_attack("simba", basis="dct").params == {"eps": 4 / 255, "iterations": 1000, "basis": "dct",
                                                       "freq_dims": None, "stride": 1, "order": "random"}


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
    ({"stride": 2}, "basis='dct'"), ({"basis": "dct", "stride": 0}, "stride"),
    ({"basis": "dct", "stride": 1.5}, "stride"),
])
def test_rejects_bad_parameters(params, message):
    with pytest.raises(SpecError, match=message):
        make_attack("simba", **params)


# --- the DCT order past the initial block, iterations run, and the budget check ---

def reference_block_order(batch, channels, height, width, freq_dims, order, generator):
    """udcbench's DCT order before the shells were added (copied from it): the initial block only, as
    (channel, u, v) tensors of shape (B, C·fh·fw)."""
    side = freq_dims or max(min(height, width) // 8, 1)
    fh, fw = min(side, height), min(side, width)
    count = channels * fh * fw
    index = torch.arange(count)
    keys = ((index // fw) % fh + index % fw).to(torch.float64).expand(batch, count)
    if order == "random":
        keys = keys + torch.rand(batch, count, generator=generator, dtype=torch.float64)
    found = torch.argsort(keys, dim=1, stable=True)
    return found // (fh * fw), (found // fw) % fh, found % fw


def reference_shells(height, width, fh, fw, stride):
    """Shell k ≥ 1: the (u, v) with u < fh + k·stride, v < fw + k·stride not in an earlier shell (0: the block)."""
    shells = torch.full((height, width), -1, dtype=torch.int64)
    shells[:fh, :fw] = 0
    k = 0
    while (shells < 0).any():
        k += 1
        region = shells[:fh + k * stride, :fw + k * stride]
        region[region < 0] = k
    return shells


def full_order(shape, generator, **params):
    channels, height, width = shape[1:]
    attack = make_attack("simba", basis="dct", iterations=channels * height * width, **params)
    return attack._order(shape, generator)


SHAPES = [(2, 3, 16, 16), (2, 3, 12, 20), (1, 2, 20, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("params", [{}, {"order": "fixed"}, {"freq_dims": 5, "stride": 3},
                                    {"freq_dims": 3, "stride": 2, "order": "fixed"}])
def test_dct_order_covers_every_direction_and_keeps_the_old_block_first(shape, params):
    batch, channels, height, width = shape
    order = full_order(shape, torch.Generator().manual_seed(11), **params)
    count = channels * height * width
    assert order.shape == (batch, count) and order.dtype == torch.int64
    assert torch.equal(order.sort(dim=1).values, torch.arange(count).expand(batch, count))  # a permutation
    channel, u, v = order // (height * width), (order // width) % height, order % width
    expected = reference_block_order(batch, channels, height, width, params.get("freq_dims"),
                                     params.get("order", "random"), torch.Generator().manual_seed(11))
    block = expected[0].shape[1]
    for mine, theirs in zip((channel, u, v), expected):
        assert torch.equal(mine[:, :block], theirs)
    fh, fw = int(u[:, :block].max()) + 1, int(v[:, :block].max()) + 1
    shells = reference_shells(height, width, fh, fw, params.get("stride", 1))
    assert torch.equal(shell_index(height, width, (fh, fw), params.get("stride", 1)), shells)
    along = shells[u, v]
    assert torch.all(along[:, :block] == 0) and torch.all(along[:, block:] >= 1)
    assert torch.all(along[:, 1:] >= along[:, :-1])  # shell by shell, outwards


def test_dct_shells_are_the_originals_l_shapes_for_a_square_image():
    shells = shell_index(12, 12, (4, 4), 4)  # initial block 4, stride 4: two L-shaped shells of width 4
    assert torch.all(shells[:4, :4] == 0)
    assert torch.all(shells[:8, 4:8] == 1) and torch.all(shells[4:8, :4] == 1)
    assert torch.all(shells[:12, 8:] == 2) and torch.all(shells[8:, :8] == 2)


def test_dct_order_is_random_within_shells_and_fixed_is_deterministic():
    shape = (2, 3, 16, 16)
    a = full_order(shape, torch.Generator().manual_seed(1))
    b = full_order(shape, torch.Generator().manual_seed(2))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, b)  # random per image and per seed
    assert torch.equal(a, full_order(shape, torch.Generator().manual_seed(1)))
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    fixed = full_order(shape, generator, order="fixed")
    assert torch.equal(generator.get_state(), state)  # "fixed" draws nothing
    assert torch.equal(fixed, full_order(shape, torch.Generator().manual_seed(2), order="fixed"))
    assert torch.equal(fixed[0], fixed[1])


def test_a_budget_within_the_block_draws_what_it_drew_before():
    shape = (2, 3, 32, 32)
    generator, reference = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    order = make_attack("simba", basis="dct", iterations=48)._order(shape, generator)  # 3 · (32 // 8)²
    reference_block_order(*shape, None, "random", reference)
    assert order.shape == (2, 48)
    assert torch.equal(generator.get_state(), reference.get_state())  # the shells' numbers are not drawn


def small(images, side=4):
    """Two images, side × side: few directions, so a budget past the DCT block stays fast."""
    return tuple(image[:2, :, :side, :side].contiguous() for image in images)


@pytest.mark.parametrize("params", [{"basis": "pixel"}, {"basis": "dct"}, {"basis": "dct", "stride": 3}])
def test_runs_exactly_its_iterations_past_the_initial_block(tiny_model, images, params):
    degraded, gt = small(images)
    iterations = 20  # of 3 · 4 · 4 = 48 directions; the default DCT block is 3 · 1² = 3 of them
    counting = CountingModel(tiny_model)
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    attack = make_attack("simba", eps=4 / 255, iterations=iterations, **params)
    adversarial = attack.perturb(counting, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert attack.last_iterations.dtype == torch.int64 and attack.last_iterations.device.type == "cpu"
    assert torch.equal(attack.last_iterations, torch.full((2,), iterations))
    queries = attack.last_queries
    assert torch.all(queries >= iterations + 1) and torch.all(queries <= 2 * iterations + 1)
    assert counting.images == queries.sum().item()
    assert (adversarial - degraded).abs().max() <= 4 / 255 + 1e-6


def test_dct_directions_past_the_block_raise_the_objective(tiny_model, images):
    degraded, gt = small(images)
    block = attack_once(tiny_model, degraded, gt, eps=4 / 255, iterations=3, basis="dct")[1]
    longer = attack_once(tiny_model, degraded, gt, eps=4 / 255, iterations=20, basis="dct")[1]
    assert torch.all(longer >= block)  # the same first 3 directions, then more
    assert longer.mean() > 1.2 * block.mean()


def test_non_square_dct_stays_in_budget(tiny_model, images):
    degraded, gt = (image[:2, :, :4, :7].contiguous() for image in images)  # block 3 · 2 · 2 = 12 directions
    adversarial, after, before, attack = attack_once(tiny_model, degraded, gt, eps=8 / 255, iterations=30,
                                                     basis="dct", freq_dims=2, stride=2)
    assert torch.equal(attack.last_iterations, torch.full((2,), 30))
    assert (adversarial - degraded).abs().max() <= 8 / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1 and torch.all(after >= before)


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_check_input_refuses_more_iterations_than_directions(basis):
    make_attack("simba", iterations=192, basis=basis).check_input((5, 3, 8, 8))  # exactly C·H·W: fine
    with pytest.raises(SpecError, match=rf"iterations=193 exceeds the 192 basis directions of a 3×8×8 image "
                                        rf"\({basis} basis: .*\); use -p iterations=192 or fewer"):
        make_attack("simba", iterations=193, basis=basis).check_input((5, 3, 8, 8))


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_perturb_refuses_more_iterations_than_directions_before_querying(tiny_model, images, basis):
    degraded, gt = small(images)
    counting = CountingModel(tiny_model)
    attack = make_attack("simba", iterations=3 * 4 * 4 + 1, basis=basis)
    with pytest.raises(SpecError, match="exceeds the 48 basis directions"):
        attack.perturb(counting, degraded, make_objective("mse-clean"), gt, torch.Generator().manual_seed(0))
    assert counting.images == 0


def test_last_iterations_covers_the_batch_with_a_mask(tiny_model, images):
    degraded, gt = small(images)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    attack = make_attack("simba", iterations=5, basis="dct")
    attack(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0), mask=mask)
    assert torch.equal(attack.last_iterations, torch.full((2,), 5)) and attack.last_queries.shape == (2,)


# --- batching and inference mode ---

def one_at_a_time(model):
    """The model evaluated image by image: an image's output cannot depend on the batch it is evaluated in."""
    return lambda x: torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])


def perturb(model, degraded, gt, seed=0, **params):
    """(adversarial, attack): SimBA on the mse-clean objective, reference from `model`."""
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt)
    attack = make_attack("simba", eps=4 / 255, **params)
    return attack.perturb(model, degraded, objective, reference, torch.Generator().manual_seed(seed)), attack


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_a_batch_gives_what_its_images_give_one_at_a_time(tiny_model, images, basis):
    """order="fixed" draws nothing, so a batch must reproduce each image attacked alone: adversarial example and
    query count (saturated pixels in image 0 make some +eps pixel candidates free, so the counts differ)."""
    degraded, gt = crop(images, 8)
    degraded = degraded.clone()
    degraded[0, :, :2] = 1.0
    model = one_at_a_time(tiny_model)
    params = {"iterations": 40, "basis": basis, "order": "fixed"}
    batch, attack = perturb(model, degraded, gt, **params)
    for i in range(degraded.shape[0]):
        alone, single = perturb(model, degraded[i:i + 1], gt[i:i + 1], **params)
        assert torch.equal(alone[0], batch[i])
        assert single.last_queries.tolist() == [attack.last_queries[i].item()]
    if basis == "pixel":
        assert len(set(attack.last_queries.tolist())) > 1


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_images_of_a_batch_do_not_interact(tiny_model, images, basis):
    """The random order is drawn from the batch's shape alone: changing one image leaves the others' adversarial
    examples and query counts exactly as they were."""
    degraded, gt = crop(images, 8)
    model = one_at_a_time(tiny_model)
    first, a = perturb(model, degraded, gt, seed=3, iterations=40, basis=basis)
    changed = degraded.clone()
    changed[1] = changed[1].flip(-1)
    second, b = perturb(model, changed, gt, seed=3, iterations=40, basis=basis)
    others = [0, 2, 3]
    assert torch.equal(first[others], second[others])
    assert torch.equal(a.last_queries[others], b.last_queries[others])
    assert not torch.equal(first[1], second[1])


@pytest.mark.parametrize("basis", ["pixel", "dct"])
def test_the_images_that_try_a_sign_share_one_forward_pass(tiny_model, images, basis):
    degraded, gt = crop(images, 8)
    iterations = 30
    recording = RecordingModel(tiny_model)
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    attack = make_attack("simba", eps=4 / 255, iterations=iterations, basis=basis)
    attack.perturb(recording, degraded, objective, reference, torch.Generator().manual_seed(0))
    sizes = [size for size, _ in recording.calls]
    assert sum(sizes) == attack.last_queries.sum().item()
    assert len(sizes) <= 2 * iterations + 1
    assert sizes[0] == 4 and sizes.count(4) >= iterations  # no pixel is saturated: every +eps step is a query
    assert [mode for _, mode in recording.calls] == [False] + [True] * (len(sizes) - 1)


def test_inference_mode_leaves_results_and_lazy_state_usable_by_autograd(tiny_model, images):
    degraded, gt = crop(images, 8)
    objective = LazyWeightedMSE()
    with torch.no_grad():
        reference = tiny_model(degraded).detach()
    attack = make_attack("simba", eps=4 / 255, iterations=10)
    adversarial = attack.perturb(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert not adversarial.is_inference() and not attack.last_queries.is_inference()
    assert not objective.weight.is_inference()
    assert_usable_by_white_box_attacks(tiny_model, adversarial, objective, reference)
