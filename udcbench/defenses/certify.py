"""Certificates of median smoothing for image-to-image models (percentile smoothing: Chiang, Curry, Abdelkader,
Kumar, Dickerson & Goldstein, "Detection as Regression: Certified Object Detection by Median Smoothing",
NeurIPS 2020).

With G ~ N(0, σ²I) and h_p(y) the p-th percentile of f(y + G), coordinate by coordinate, every perturbation
‖δ‖₂ ≤ r keeps the smoothed output inside percentiles of the smoothed function at y:

    h_{p₋}(y) ≤ h_p(y + δ) ≤ h_{p₊}(y),      p± = Φ(Φ⁻¹(p) ± r/σ)      (the median: p = ½, p± = Φ(±r/σ))

The percentiles of f(y + G) are unknown; from n samples they are bounded by order statistics (Clopper–Pearson
for a quantile): the k-th smallest sample X₍k₎ is ≥ the p-quantile unless fewer than k samples fall below it,
an event of probability P(Bin(n, p) ≥ k); so X₍k_up₎ with the smallest k_up for which P(Bin(n, p₊) ≥ k_up) ≤ a
is an upper bound with confidence 1 − a, and X₍k_low₎ with the largest k_low for which P(Bin(n, p₋) ≤ k_low − 1)
≤ a a lower one. Every coordinate of an image is certified jointly: a = α / (2·d) for d = C·H·W coordinates
(Bonferroni over the 2d one-sided bounds), so the whole interval image holds with confidence ≥ 1 − α. Where no
order statistic is good enough (n too small for p± and a), the bound is the output range itself, [0, 1] (the
smoothed outputs are clamped to it).

From the per-pixel interval [lower, upper] the worst output any ‖δ‖₂ ≤ r can produce against a reference z
(ground truth, or the smoothed clean output) takes at each pixel the end farther from z, so

    certified PSNR(r) = PSNR(worst, z) = −10·log10(mean(max(z − lower, upper − z)²))

is a lower bound on the PSNR of the smoothed output at y + δ — of the median smoothed function h_½, which the
reported output (the median of n fresh draws) estimates. The bound does not depend on any attack.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from udcbench.errors import SpecError
from udcbench.metrics.fidelity import psnr


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _binomial_pmf(n: int, p: float) -> list[float]:
    """P(Bin(n, p) = j) for j = 0 … n, from log-gamma (float64; exact 0/1 ends)."""
    if p <= 0.0 or p >= 1.0:
        return [float(j == (0 if p <= 0.0 else n)) for j in range(n + 1)]
    logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(p)
            + (n - j) * math.log1p(-p) for j in range(n + 1)]
    return [math.exp(value) for value in logs]


@lru_cache(maxsize=4096)
def order_ranks(n: int, p_low: float, p_high: float, a: float) -> tuple[int | None, int | None]:
    """(k_low, k_up): 1-based ranks of the order statistics that bound the p_low-quantile from below and the
    p_high-quantile from above, each with confidence 1 − a; None where no rank reaches it."""
    low_pmf, high_pmf = _binomial_pmf(n, p_low), _binomial_pmf(n, p_high)
    k_low = None  # largest k with P(Bin(n, p_low) ≤ k − 1) ≤ a
    below = 0.0
    for k in range(1, n + 1):
        below += low_pmf[k - 1]
        if below > a:
            break
        k_low = k
    k_up = None  # smallest k with P(Bin(n, p_high) ≥ k) ≤ a
    above = 0.0
    for k in range(n, 0, -1):
        above += high_pmf[k]
        if above > a:
            break
        k_up = k
    return k_low, k_up


def joint_level(alpha: float, coordinates: int) -> float:
    """The confidence level of each one-sided bound: α split over the 2·d bounds of d coordinates."""
    return alpha / (2 * coordinates)


def smallest_n(sigma: float, radius: float, alpha: float, coordinates: int, limit: int = 1_000_000) -> int | None:
    """The fewest samples whose order statistics certify both bounds of the median at `radius` (None: more
    than `limit`). At radius 0 this is the least n that certifies anything."""
    a = joint_level(alpha, coordinates)
    shift = radius / sigma
    low, high = normal_cdf(-shift), normal_cdf(shift)
    n = 1
    while n <= limit:  # doubling, then bisection: certifiability is monotone in n
        k_low, k_up = order_ranks(n, low, high, a)
        if k_low is not None and k_up is not None:
            break
        n *= 2
    else:
        return None
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if None in order_ranks(mid, low, high, a):
            lo = mid
        else:
            hi = mid
    return hi


def check_samples(n: int, alpha: float, coordinates: int, what: str) -> None:
    """SpecError when n samples cannot certify anything at confidence 1 − α over `coordinates` coordinates."""
    needed = smallest_n(1.0, 0.0, alpha, coordinates)
    if needed is not None and n < needed:
        raise SpecError(f"smooth n={n} samples cannot certify {what} at confidence 1−α = {1 - alpha:g} (jointly over "
                        f"{coordinates} pixel values it takes n ≥ {needed}); raise n (e.g. smooth:n={max(needed, 100)})"
                        " or alpha")


def bounds(samples: torch.Tensor, sigma: float, radius: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper): per-pixel bounds, holding for every ‖δ‖₂ ≤ radius, on the median smoothed output.

    samples: (n, B, C, H, W) outputs f(y + σ·gᵢ) in [0, 1], already sorted along dim 0."""
    n, coordinates = samples.shape[0], samples[0, 0].numel()
    shift = radius / sigma
    k_low, k_up = order_ranks(n, normal_cdf(-shift), normal_cdf(shift), joint_level(alpha, coordinates))
    lower = samples[k_low - 1] if k_low is not None else torch.zeros_like(samples[0])
    upper = samples[k_up - 1] if k_up is not None else torch.ones_like(samples[0])
    return lower, upper


def worst_output(lower: torch.Tensor, upper: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The output inside [lower, upper] farthest from `reference`, pixel by pixel (the end farther away)."""
    return torch.where((reference - lower).abs() >= (upper - reference).abs(), lower, upper)


def certified_psnr(lower: torch.Tensor, upper: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B,) the least PSNR vs `reference` of any output inside [lower, upper]."""
    return psnr(worst_output(lower, upper, reference), reference)


def certify(samples: torch.Tensor, sigma: float, alpha: float, radii, gt: torch.Tensor,
            clean: torch.Tensor) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """{radius: (certified PSNR vs gt, vs the smoothed clean output `clean`)}, each (B,), from sorted samples."""
    found = {}
    for radius in radii:
        lower, upper = bounds(samples, sigma, radius, alpha)
        found[radius] = (certified_psnr(lower, upper, gt), certified_psnr(lower, upper, clean))
    return found
