"""Square Attack, L∞ ("square") and L2 ("square-l2"): score-based random search, no gradients.

Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via random search",
ECCV 2020 (Algorithms 1-3). For a regression model the score is the objective (e.g. MSE between f(y + δ) and
the clean output), which the attack drives up. There is no "fooled" early stop: the attack runs to its budget.

Distance: "square" L∞, ‖δ‖∞ ≤ eps; "square-l2" L2, ‖δ‖₂ ≤ eps over the whole image (all C·H·W values, per
image; images are in [0, 1], so eps=1.0 on 3×H×W is a small budget per pixel); y + δ ∈ [0, 1] for both.
Arguments: eps (square 8/255, square-l2 1.0), queries (1000: the query budget per image), p_init (square
0.05, square-l2 0.1: the initial fraction of the image a square covers).
Queries (self.last_queries, per image, always exactly `queries`): 1 for the unperturbed input (so the result
is never worse than no attack), 1 for the initialisation, and queries − 2 iterations of 1 query each; each query
is one forward pass of the whole batch (every image's candidate), under torch.inference_mode after the first
(the unperturbed input, under torch.no_grad, so state an objective builds on first use stays autograd-safe).
Schedule (`square_p_schedule`): the paper halves p at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
8000 of a 10,000-query budget; for a budget of `queries`, breakpoint b sits at round(b · queries / 10000)
(rounded half up) and iteration i (0-based, after the initialisation) uses p_init / 2^k, k = the number of
breakpoints strictly below i. At queries=10000 this is the reference implementation's schedule exactly.
Side of a square: s = round(sqrt(p·H·W)), at least 1 (L2: at least 3 and odd), at most min(H, W) − 1.
Window positions are drawn per image, uniformly over all positions that fit (the reference code shares
one position across the batch and never uses the last row/column position).

L∞ (Algorithm 2): start from vertical stripes, δ[b, c, :, w] = ±eps (random per image, channel and column),
clipped to [0, 1]. Each iteration one random s×s window gets a new per-channel value ±eps (random sign); as
in the reference code, the signs are redrawn (up to 8 times) for images whose window would not change.
L2 (Algorithm 3): start by tiling the image with squares of side min(H, W) // 5, each holding the
"meta-pattern" (two halves of nested squares, values decaying like Σ 1/(k+1)², with opposite signs, randomly
transposed) with a random sign per tile and channel, scaled so that ‖δ‖₂ = eps. Each iteration draws two
windows W1, W2 of side s; per channel, the energy of δ in W1 ∪ W2 plus an equal share of the unused budget
(eps² − ‖δ‖²)/C is put into W1 as (a new random-sign meta-pattern + the old content of W1, normalised),
W2 is zeroed, then δ is rescaled to ‖δ‖₂ = eps and y + δ clipped to [0, 1] (clipping only shrinks the
norm; the energy it removes becomes unused budget for later iterations). Deviation: the meta-pattern's
transposition is drawn per image (the reference code draws it once per batch).
Accepted when the objective rises strictly, per image.
Shapes: degraded (B, C, H, W) in [0, 1] -> (B, C, H, W). Randomness from the CPU generator: the same seed gives
the same result on any device.

    attack = make_attack("square", eps=8/255, queries=1000)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from udcbench.attacks.base import Attack, AttackKind, BestTracker, register_attack_class
from udcbench.errors import SpecError

BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SIGN_REDRAWS = 8


def square_p_schedule(p_init: float, iteration: int, queries: int) -> float:
    """p for 0-based `iteration` of a `queries` budget: halved at each breakpoint of BREAKPOINTS (given for
    10,000 queries) rescaled to round(b · queries / 10000), rounded half up."""
    halvings = sum(iteration > math.floor(b * queries / 10000 + 0.5) for b in BREAKPOINTS)
    return p_init / 2 ** halvings


def _side(p: float, height: int, width: int, minimum: int = 1, odd: bool = False) -> int:
    side = max(int(round(math.sqrt(p * height * width))), minimum)
    if odd and side % 2 == 0:
        side += 1
    return max(min(side, min(height, width) - 1), 1)


def _randint(high, shape, generator, device) -> torch.Tensor:
    """Integers in [0, high) from the CPU generator, moved to `device`."""
    return torch.randint(0, high, shape, generator=generator).to(device)


def _random_sign(shape, generator, like) -> torch.Tensor:
    return (2 * torch.randint(0, 2, shape, generator=generator) - 1).to(like.device, like.dtype)


def _windows(side: int, shape, generator, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random side×side window per image: (B, 1, H, W) bool mask and the top-left rows and columns."""
    batch, _, height, width = shape
    top = _randint(height - side + 1, (batch,), generator, device)
    left = _randint(width - side + 1, (batch,), generator, device)
    rows = torch.arange(height, device=device)[None, :] - top[:, None]
    cols = torch.arange(width, device=device)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :]
    return inside[:, None], top, left


class _SquareBase(Attack):
    kind = AttackKind.BLACK_BOX

    def __init__(self, *, eps: float, queries: int = 1000, p_init: float):
        """eps and p_init have each variant's defaults (stated in its __init__); the query budget is shared."""
        if self.norm == "linf" and not 0 < eps <= 1:
            raise SpecError(f"{self.name}: eps must lie in (0, 1] (images are in [0, 1]), got {eps:g}; e.g. 8/255")
        if self.norm == "l2" and not eps > 0:
            raise SpecError(f"{self.name}: eps (the L2 norm of δ over the whole image) must be positive, "
                            f"got {eps:g}; e.g. 1.0")
        if int(queries) != queries or int(queries) < 2:
            raise SpecError(f"{self.name}: queries must be a whole number ≥ 2 (one for the unperturbed input, one "
                            f"for the initialisation, the rest for iterations), got {queries}")
        if not 0 < p_init <= 1:
            raise SpecError(f"{self.name}: p_init (the fraction of the image a square covers) must lie in (0, 1], "
                            f"got {p_init:g}")
        super().__init__(eps=float(eps), queries=int(queries), p_init=float(p_init))

    def initialise(self, degraded, generator) -> torch.Tensor:
        raise NotImplementedError

    def candidate(self, degraded, adversarial, iteration, generator) -> torch.Tensor:
        raise NotImplementedError

    def perturb(self, model, degraded, objective, reference, generator):
        degraded = degraded.detach()
        with torch.no_grad():  # outside inference mode: whatever the objective or model builds on its first call
            best = BestTracker(degraded, self.value(model, degraded, objective, reference))  # stays autograd-safe
        with torch.inference_mode():  # one forward pass of the whole batch per query, no autograd bookkeeping
            adversarial = self.initialise(degraded, generator)
            value = self.value(model, adversarial, objective, reference)
            for iteration in range(self.params["queries"] - 2):
                candidate = self.candidate(degraded, adversarial, iteration, generator)
                tried = self.value(model, candidate, objective, reference)
                better = tried > value
                adversarial = torch.where(better[:, None, None, None], candidate, adversarial)
                value = torch.where(better, tried, value)
        with torch.no_grad():  # outside inference mode, so the result is a normal tensor
            best.update(adversarial, value)
        self.last_queries = torch.full((degraded.shape[0],), self.params["queries"], dtype=torch.int64)
        return best.adversarial


class SquareLinf(_SquareBase):
    name = "square"
    norm = "linf"

    def __init__(self, *, eps: float = 8 / 255, p_init: float = 0.05, **base):
        super().__init__(eps=eps, p_init=p_init, **base)

    def initialise(self, degraded, generator):
        batch, channels, _, width = degraded.shape
        stripes = _random_sign((batch, channels, 1, width), generator, degraded)
        return (degraded + self.params["eps"] * stripes).clamp(0.0, 1.0)

    def candidate(self, degraded, adversarial, iteration, generator):
        eps, queries = self.params["eps"], self.params["queries"]
        batch, channels, height, width = degraded.shape
        side = _side(square_p_schedule(self.params["p_init"], iteration, queries), height, width)
        window, _, _ = _windows(side, degraded.shape, generator, degraded.device)
        signs = _random_sign((batch, channels, 1, 1), generator, degraded)
        candidate = torch.where(window, (degraded + eps * signs).clamp(0.0, 1.0), adversarial)
        for _ in range(SIGN_REDRAWS):  # the reference code redraws until the window changes
            unchanged = ~(candidate != adversarial).flatten(1).any(dim=1)
            if not unchanged.any():
                break
            signs = torch.where(unchanged[:, None, None, None],
                                _random_sign((batch, channels, 1, 1), generator, degraded), signs)
            candidate = torch.where(window, (degraded + eps * signs).clamp(0.0, 1.0), adversarial)
        return candidate


@lru_cache(maxsize=64)
def _nested_squares(rows: int, cols: int) -> torch.Tensor:
    """Centred nested rectangles: ring k (Chebyshev distance k from the centre) holds Σ_{j≥k} 1/(j+1)²;
    unit L2 norm. Cached, so built as a normal tensor even when first asked for inside inference mode."""
    with torch.inference_mode(False):
        pattern = torch.zeros(rows, cols, dtype=torch.float64)
        top, left = rows // 2, cols // 2
        for k in range(max(rows // 2 + 1, cols // 2 + 1)):
            pattern[max(top - k, 0):min(top + k + 1, rows),
                    max(left - k, 0):min(left + k + 1, cols)] += 1.0 / (k + 1) ** 2
        return pattern / pattern.norm().clamp_min(1e-12)


@lru_cache(maxsize=64)
def meta_pattern(side: int) -> torch.Tensor:
    """The paper's meta-pattern (side × side, unit L2 norm): nested squares in the top half, the same with the
    opposite sign in the bottom half (cached: a normal tensor, as _nested_squares)."""
    half = side // 2
    with torch.inference_mode(False):
        pattern = torch.zeros(side, side, dtype=torch.float64)
        if half > 0:
            pattern[:half] = _nested_squares(half, side)
        pattern[half:] = -_nested_squares(side - half, side)
        return pattern / pattern.norm().clamp_min(1e-12)


def _random_meta_patterns(side: int, batch: int, generator, like) -> torch.Tensor:
    """(B, side, side) meta-patterns, each transposed with probability 1/2."""
    pattern = meta_pattern(side).to(like.device, like.dtype)
    transpose = _randint(2, (batch,), generator, like.device).bool()
    return torch.where(transpose[:, None, None], pattern.T, pattern)


def _l2_rescale(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / norms)[:, None, None, None]


class SquareL2(_SquareBase):
    name = "square-l2"
    norm = "l2"

    def __init__(self, *, eps: float = 1.0, p_init: float = 0.1, **base):
        super().__init__(eps=eps, p_init=p_init, **base)

    def initialise(self, degraded, generator):
        batch, channels, height, width = degraded.shape
        tile = max(min(height, width) // 5, 1)
        tiles_h, tiles_w = height // tile, width // tile
        top0, left0 = (height - tiles_h * tile) // 2, (width - tiles_w * tile) // 2
        delta = torch.zeros_like(degraded)
        for i in range(tiles_h):
            for j in range(tiles_w):
                pattern = _random_meta_patterns(tile, batch, generator, degraded)[:, None]
                signs = _random_sign((batch, channels, 1, 1), generator, degraded)
                top, left = top0 + i * tile, left0 + j * tile
                delta[:, :, top:top + tile, left:left + tile] = pattern * signs
        return (degraded + _l2_rescale(delta, self.params["eps"])).clamp(0.0, 1.0)

    def candidate(self, degraded, adversarial, iteration, generator):
        eps = self.params["eps"]
        batch, channels, height, width = degraded.shape
        side = _side(square_p_schedule(self.params["p_init"], iteration, self.params["queries"]), height, width,
                     minimum=3, odd=True)
        first, top, left = _windows(side, degraded.shape, generator, degraded.device)
        second, _, _ = _windows(side, degraded.shape, generator, degraded.device)
        delta = adversarial - degraded
        unused = (eps ** 2 - delta.flatten(1).pow(2).sum(dim=1)).clamp_min(0.0) / channels  # (B,)
        union_energy = (delta * (first | second)).pow(2).sum(dim=(2, 3))  # (B, C)
        available = (union_energy + unused[:, None]).sqrt()[:, :, None, None]
        # the new meta-pattern, placed at each image's W1 by gathering pattern[row - top, col - left]
        patterns = _random_meta_patterns(side, batch, generator, degraded)
        rows = (torch.arange(height, device=degraded.device)[None] - top[:, None]).clamp(0, side - 1)
        cols = (torch.arange(width, device=degraded.device)[None] - left[:, None]).clamp(0, side - 1)
        images = torch.arange(batch, device=degraded.device)[:, None, None]
        placed = patterns[images, rows[:, :, None], cols[:, None, :]][:, None] * first  # (B, 1, H, W)
        old = delta * first
        old = old / (old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt() + 1e-10)
        new = placed * _random_sign((batch, channels, 1, 1), generator, degraded) + old
        new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * available
        delta = torch.where(first, new, torch.where(second, torch.zeros_like(delta), delta))
        return (degraded + _l2_rescale(delta, eps)).clamp(0.0, 1.0)


register_attack_class(SquareLinf, paper="Andriushchenko et al., ECCV 2020")
register_attack_class(SquareL2, paper="Andriushchenko et al., ECCV 2020")
