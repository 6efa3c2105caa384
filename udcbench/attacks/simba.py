"""SimBA: simple black-box attack, L∞ (score-based, no gradients).

Guo et al., "Simple Black-box Adversarial Attacks", ICML 2019. For a regression model the score is the
objective (e.g. MSE between f(y + δ) and the clean output), which the attack drives up.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
Arguments: eps (4/255: the step along each basis direction), iterations (1000: basis directions tried),
basis ("pixel" | "dct"), freq_dims (None -> max(min(H, W) // 8, 1); DCT only: the lowest freq_dims × freq_dims
frequencies are used, the paper's 1/8 of the spectrum), order ("random" | "fixed").
Each iteration takes the next basis direction q and tries x + eps·q (1 query); if the objective does not rise
it tries x − eps·q (1 more query, only for those images); a candidate is kept when its objective is strictly
higher. The paper tries −eps·q first; the order of the two signs is immaterial since q's sign is arbitrary.
A candidate that clipping leaves equal to x is not evaluated (no query spent).
- pixel: q is a one-hot (channel, row, col) coordinate, drawn without replacement (a random permutation per
  image, or raster order if order="fixed"), so every coordinate moves at most once by ±eps and ‖δ‖∞ ≤ eps
  holds by construction; at most C·H·W iterations are possible.
- dct: q is a 2-D DCT-II basis image (u, v) of one channel. The paper's q is orthonormal (each step has L2
  norm eps); here q is the orthonormal basis image rescaled to ‖q‖∞ = 1, so that eps is the per-pixel size of
  one step, as in the pixel basis, and the L∞ budget is reachable. Directions are ordered low frequencies
  first by diagonal u + v, randomly within a diagonal (over channel and (u, v); "fixed": by channel, u, v);
  at most C·freq_dims² iterations are possible. Since DCT steps overlap, every candidate is projected onto
  {‖δ‖∞ ≤ eps} ∩ [0, 1] before it is evaluated: the step actually taken is the projected one, not eps·q.
Queries (self.last_queries, per image): 1 for the unperturbed input + 1 or 2 per iteration, so at most
2·iterations + 1. The result's objective is never below the unperturbed input's (x starts there and only rises).
Shapes: degraded (B, C, H, W) in [0, 1] -> (B, C, H, W). Randomness from the CPU generator: the same seed gives
the same result on any device.

    attack = make_attack("simba", eps=4/255, iterations=1000, basis="dct")
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import math

import torch

from udcbench.attacks.base import Attack, project_linf
from udcbench.errors import SpecError
from udcbench.registry import register_attack

DEFAULTS = {"eps": 4 / 255, "iterations": 1000, "basis": "pixel", "freq_dims": None, "order": "random"}
BASES = ("pixel", "dct")
ORDERS = ("random", "fixed")


def dct_matrix(size: int, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (size × size): row k is the k-th 1-D basis vector, D @ D.T = I."""
    n = torch.arange(size, dtype=torch.float64)
    k = n[:, None]
    matrix = torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] = math.sqrt(1.0 / size)
    return matrix.to(dtype)


class SimBA(Attack):
    name = "simba"
    norm = "linf"
    kind = "black-box"

    def __init__(self, eps: float = 4 / 255, iterations: int = 1000, basis: str = "pixel",
                 freq_dims: int | None = None, order: str = "random"):
        if not 0 < eps <= 1:
            raise SpecError(f"simba: eps (the step along each basis direction) must lie in (0, 1], got {eps:g}; "
                            "e.g. eps=4/255")
        if int(iterations) != iterations or int(iterations) < 0:
            raise SpecError(f"simba: iterations must be a whole number ≥ 0, got {iterations}")
        if basis not in BASES:
            raise SpecError(f"simba: unknown basis {basis!r}; choose one of {', '.join(BASES)}")
        if order not in ORDERS:
            raise SpecError(f"simba: unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        if freq_dims is not None:
            if basis != "dct":
                raise SpecError("simba: freq_dims only applies to basis='dct'; leave it unset for the pixel basis")
            if int(freq_dims) != freq_dims or int(freq_dims) < 1:
                raise SpecError(f"simba: freq_dims must be a whole number ≥ 1 (or None for min(H, W) // 8), "
                                f"got {freq_dims}")
            freq_dims = int(freq_dims)
        super().__init__(eps=float(eps), iterations=int(iterations), basis=basis, freq_dims=freq_dims, order=order)

    def _order(self, shape, generator: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, N) CPU indices of the basis directions in the order they are tried, and the DCT block (fh, fw)."""
        batch, channels, height, width = shape
        if self.params["basis"] == "pixel":
            count, block = channels * height * width, (height, width)
            keys = torch.zeros(batch, count, dtype=torch.float64)
        else:
            side = self.params["freq_dims"] or max(min(height, width) // 8, 1)
            block = (min(side, height), min(side, width))
            count = channels * block[0] * block[1]
            index = torch.arange(count)
            keys = ((index // block[1]) % block[0] + index % block[1]).to(torch.float64).expand(batch, count)
        if self.params["order"] == "random":  # uniform in [0, 1): shuffles within a diagonal (or everything)
            keys = keys + torch.rand(batch, count, generator=generator, dtype=torch.float64)
        return torch.argsort(keys, dim=1, stable=True), block

    def _directions(self, index: torch.Tensor, like: torch.Tensor, block, dct_rows, dct_cols) -> torch.Tensor:
        """(B, C, H, W) basis images for one direction index per image, max |q| = 1."""
        batch, channels, height, width = like.shape
        index = index.to(like.device)
        rows = torch.arange(batch, device=like.device)
        q = torch.zeros(batch, channels * height * width, dtype=like.dtype, device=like.device)
        if self.params["basis"] == "pixel":
            q[rows, index] = 1.0
            return q.view_as(like)
        q = q.view_as(like)
        fh, fw = block
        channel, u, v = index // (fh * fw), (index // fw) % fh, index % fw
        basis = dct_rows[u][:, :, None] * dct_cols[v][:, None, :]  # (B, H, W)
        basis = basis / basis.flatten(1).abs().amax(dim=1)[:, None, None]
        q[rows, channel] = basis
        return q

    def perturb(self, model, degraded, objective, reference, generator):
        eps = self.params["eps"]
        degraded = degraded.detach()
        batch, _, height, width = degraded.shape
        order, block = self._order(degraded.shape, generator)
        dct_rows = dct_matrix(height, degraded.dtype).to(degraded.device)
        dct_cols = dct_matrix(width, degraded.dtype).to(degraded.device)
        queries = torch.ones(batch, dtype=torch.int64)
        with torch.no_grad():
            adversarial = degraded.clone()
            value = self.value(model, adversarial, objective, reference)
            for step in range(min(self.params["iterations"], order.shape[1])):
                q = self._directions(order[:, step], degraded, block, dct_rows, dct_cols)
                pending = torch.ones(batch, dtype=torch.bool, device=degraded.device)
                for sign in (1.0, -1.0):
                    candidate = project_linf(adversarial + sign * eps * q, degraded, eps)
                    todo = pending & (candidate != adversarial).flatten(1).any(dim=1)
                    index = todo.nonzero().flatten()
                    if index.numel() == 0:
                        continue
                    tried = self.value(model, candidate[index], objective, reference[index])
                    queries[index.cpu()] += 1
                    better = tried > value[index]
                    kept = index[better]
                    adversarial[kept] = candidate[kept]
                    value[kept] = tried[better]
                    pending[kept] = False
        self.last_queries = queries
        return adversarial


register_attack("simba", defaults=DEFAULTS, norm="linf", kind="black-box",
                paper="Guo et al., ICML 2019")(SimBA)
