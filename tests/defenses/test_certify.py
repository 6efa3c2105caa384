"""The median-smoothing certificate itself (udcbench/defenses/certify.py): ranks, bounds, coverage."""

import math

import pytest
import torch

from udcbench.defenses.certify import (bounds, certified_psnr, check_samples, joint_level, normal_cdf, order_ranks,
                                       smallest_n, worst_output)
from udcbench.errors import SpecError
from udcbench.metrics import psnr


def sorted_samples(function, image, sigma, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *image.shape), generator=generator)
    return function(image.unsqueeze(0) + sigma * noise).clamp(0, 1).sort(dim=0).values


def test_ranks_follow_the_binomial_tails():
    """k_up is the smallest rank whose binomial upper tail is ≤ a, k_low the largest whose lower tail is."""
    n, p, a = 50, 0.7, 0.01
    k_low, k_up = order_ranks(n, 1 - p, p, a)

    def tail_at_least(k, q):  # P(Bin(n, q) ≥ k)
        return sum(math.comb(n, j) * q ** j * (1 - q) ** (n - j) for j in range(k, n + 1))

    assert tail_at_least(k_up, p) <= a < tail_at_least(k_up - 1, p)
    assert 1 - tail_at_least(k_low, 1 - p) <= a < 1 - tail_at_least(k_low + 1, 1 - p)
    assert order_ranks(5, 0.2, 0.8, 1e-6) == (None, None)  # too few samples: no order statistic is good enough


def test_radius_zero_interval_contains_the_smoothed_output():
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    samples = sorted_samples(lambda x: x ** 2, image, 0.2, 101)
    lower, upper = bounds(samples, 0.2, 0.0, 0.01)
    median = samples[50]
    assert bool((lower <= median).all() and (median <= upper).all())
    assert bool((lower < upper).any())


def test_bounds_widen_with_the_radius_and_narrow_with_n():
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    function = torch.sin
    samples = sorted_samples(function, image, 0.25, 400)
    previous = None
    for radius in (0.0, 0.05, 0.1, 0.2, 0.3):
        lower, upper = bounds(samples, 0.25, radius, 0.001)
        if previous is not None:
            assert bool((lower <= previous[0]).all() and (upper >= previous[1]).all())
        previous = (lower, upper)
    widths = []
    for n in (200, 800, 3200):
        lower, upper = bounds(sorted_samples(function, image, 0.25, n, seed=3), 0.25, 0.1, 0.001)
        widths.append((upper - lower).mean().item())
    assert widths[0] > widths[1] > widths[2], widths
    # in quantile terms the ranks close in on p± = Φ(±r/σ) as n grows
    fractions = [order_ranks(n, normal_cdf(-0.4), normal_cdf(0.4), 1e-4)[1] / n for n in (200, 800, 3200, 12800)]
    assert fractions == sorted(fractions, reverse=True) and fractions[-1] - normal_cdf(0.4) < 0.02


def test_a_constant_function_certifies_exactly():
    image = torch.rand(2, 3, 8, 8)
    constant = torch.full((2, 3, 8, 8), 0.3)
    samples = sorted_samples(lambda x: constant.expand_as(x), image, 0.5, 200)
    lower, upper = bounds(samples, 0.5, 0.5, 0.001)
    assert torch.equal(lower, constant) and torch.equal(upper, constant)
    gt = torch.rand(2, 3, 8, 8)
    assert torch.allclose(certified_psnr(lower, upper, gt), psnr(constant, gt))
    assert torch.isinf(certified_psnr(lower, upper, constant)).all()  # vs its own smoothed output: no change at all


def test_the_worst_output_takes_the_farther_end():
    lower, upper = torch.tensor([0.2, 0.2, 0.0]), torch.tensor([0.5, 0.9, 1.0])
    reference = torch.tensor([0.3, 0.6, 1.0])
    assert torch.equal(worst_output(lower, upper, reference), torch.tensor([0.5, 0.2, 0.0]))


def test_the_confidence_is_corrected_for_the_pixels_certified_jointly():
    """bounds() on a C×H×W image uses α / (2·C·H·W) per one-sided bound, not α."""
    n, sigma, radius, alpha = 300, 0.5, 0.25, 0.01
    image = torch.rand(1, 3, 4, 4)
    samples = sorted_samples(lambda x: x, image, sigma, n)
    k_low, k_up = order_ranks(n, normal_cdf(-radius / sigma), normal_cdf(radius / sigma), joint_level(alpha, 48))
    lower, upper = bounds(samples, sigma, radius, alpha)
    assert torch.equal(lower, samples[k_low - 1]) and torch.equal(upper, samples[k_up - 1])
    single = order_ranks(n, normal_cdf(-radius / sigma), normal_cdf(radius / sigma), alpha / 2)
    assert single[1] < k_up and single[0] > k_low  # the joint bound is wider than one pixel's


@pytest.mark.parametrize("pixels", [1, 20])
def test_monte_carlo_coverage_is_at_least_one_minus_alpha(pixels):
    """f(x) = x on `pixels` coordinates: the median smoothed output at y + δ is y + δ, so the certificate at
    radius r must contain y ± r in every pixel at once — in at least 1 − α of many independent trials."""
    sigma, radius, alpha, n, trials = 0.5, 0.2, 0.2, 60, 2000
    generator = torch.Generator().manual_seed(11)
    y = torch.full((trials, pixels), 0.5)
    noise = torch.randn((n, trials, pixels), generator=generator)
    samples = (y + sigma * noise).sort(dim=0).values  # unclamped: the identity's own percentiles
    k_low, k_up = order_ranks(n, normal_cdf(-radius / sigma), normal_cdf(radius / sigma),
                              joint_level(alpha, pixels))
    covered = ((samples[k_low - 1] <= y - radius) & (samples[k_up - 1] >= y + radius)).all(dim=1)
    failures = 1 - covered.float().mean().item()
    assert failures <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials), failures
    assert failures > 0  # the test can fail: the bound is not vacuous at this n


def test_n_too_small_for_the_confidence_is_refused():
    needed = smallest_n(1.0, 0.0, 0.001, 3 * 64 * 64)
    assert needed == math.ceil(math.log2(2 * 3 * 64 * 64 / 0.001))  # r = 0: min and max must do
    check_samples(needed, 0.001, 3 * 64 * 64, "64×64 images")
    with pytest.raises(SpecError, match=r"n ≥ 25"):
        check_samples(needed - 1, 0.001, 3 * 64 * 64, "64×64 images")
    assert smallest_n(0.25, 0.25, 0.001, 3 * 128 * 128) > smallest_n(0.5, 0.25, 0.001, 3 * 128 * 128)
