"""SimBA: simple black-box attack, L∞ (score-based, no gradients).

Guo et al., "Simple Black-box Adversarial Attacks", ICML 2019 (code: github.com/cg563/simple-blackbox-attack).
For a regression model the score is the objective (e.g. MSE between f(y + δ) and the clean output), which the
attack drives up.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
Arguments (defaults in brackets):
- eps [4/255]: the step along each basis direction.
- iterations [1000]: basis directions tried, each at most once; at most C·H·W for either basis (a larger budget
  is refused with a SpecError by check_input, which the runner calls before anything runs, and by perturb).
- basis ["pixel"]: "pixel" | "dct".
- freq_dims [None -> max(min(H, W) // 8, 1)]: DCT only; the side of the initial low-frequency block that is
  tried first (the paper's 1/8 of the spectrum), clipped to the image: (fh, fw) = (min(freq_dims, H),
  min(freq_dims, W)).
- stride [1, as the original's utils.block_order; its run_simba.py used 7 with freq_dims=14 at 224 px]: DCT
  only; the width of the shells that follow the initial block (see below). Not stored in the parameters of a
  pixel-basis attack (it does not apply there, and pixel runs keep their run hashes).
- order ["random"]: "random" | "fixed" (deterministic, draws no random numbers).
Each iteration takes the next basis direction q and tries x + eps·q (1 query); if the objective does not rise
it tries x − eps·q (1 more query, only for those images); a candidate is kept when its objective is strictly
higher. The paper tries −eps·q first; the order of the two signs is immaterial since q's sign is arbitrary.
A candidate that clipping leaves equal to x is not evaluated (no query spent; the iteration still counts).
- pixel: q is a one-hot (channel, row, col) coordinate, drawn without replacement (a random permutation per
  image, or raster order if order="fixed"), so every coordinate moves at most once by ±eps and ‖δ‖∞ ≤ eps
  holds by construction.
- dct: q is a 2-D DCT-II basis image (u, v) of one channel. The paper's q is orthonormal (each step has L2
  norm eps); here q is the orthonormal basis image rescaled to ‖q‖∞ = 1, so that eps is the per-pixel size of
  one step, as in the pixel basis, and the L∞ budget is reachable. The order follows the original's strided
  block order: first the C·fh·fw directions of the initial block, by diagonal u + v, randomly within a diagonal
  (over channel and (u, v); "fixed": by channel, u, v within a diagonal); then shells k = 1, 2, ...: shell k
  holds the (u, v) with u < fh + k·stride and v < fw + k·stride not in an earlier shell, clipped to the image
  (an L-shaped band of width stride; for H ≠ W, once one axis is used up the shells go on as bands of stride
  rows or columns along the other), in all C channels, in random order within a shell ("fixed": by u + v,
  then channel, u, v). For a square image whose H − freq_dims is a multiple of stride these are exactly the
  original's shells. Every one of the C·H·W directions comes once. The shells' random numbers are drawn only
  when iterations exceeds C·fh·fw, so budgets within the initial block give bit-identical results to the
  earlier block-only order. Since DCT steps overlap, every candidate is projected onto
  {‖δ‖∞ ≤ eps} ∩ [0, 1] before it is evaluated: the step actually taken is the projected one, not eps·q.
Queries (self.last_queries, per image): 1 for the unperturbed input + 1 or 2 per iteration, so at most
2·iterations + 1. Each sign of an iteration is one forward pass over the images that try it (+eps: all whose
candidate differs from their iterate; −eps: those of them whose objective did not rise), run under
torch.inference_mode; the unperturbed input is evaluated under torch.no_grad, so whatever an objective or model
builds on its first call (LPIPS weights, ...) stays usable by autograd, and the result is a normal tensor.
Iterations (self.last_iterations, per image, (B,) int64): always `iterations`. The result's objective is never
below the unperturbed input's (x starts there and only rises).
Shapes: degraded (B, C, H, W) in [0, 1] -> (B, C, H, W). Randomness from the CPU generator: the same seed gives
the same result on any device.

    attack = make_attack("simba", eps=4/255, iterations=1000, basis="dct")
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import math

import torch

from udcbench.attacks.base import Attack, AttackKind, attack_defaults, register_attack_class
from udcbench.errors import SpecError

BASES = ("pixel", "dct")
ORDERS = ("random", "fixed")


def dct_matrix(size: int, dtype=torch.float32) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (size × size): row k is the k-th 1-D basis vector, D @ D.T = I."""
    n = torch.arange(size, dtype=torch.float64)
    k = n[:, None]
    matrix = torch.cos(math.pi * (2 * n[None, :] + 1) * k / (2 * size)) * math.sqrt(2.0 / size)
    matrix[0] = math.sqrt(1.0 / size)
    return matrix.to(dtype)


def shell_index(height: int, width: int, block: tuple[int, int], stride: int) -> torch.Tensor:
    """(H, W) int64: 0 on the initial block [0, fh) × [0, fw) of frequencies (u, v), k ≥ 1 on the k-th shell,
    {u < fh + k·stride, v < fw + k·stride} minus the earlier shells."""
    fh, fw = block
    u = torch.arange(height)[:, None]
    v = torch.arange(width)[None, :]
    rows = torch.where(u >= fh, torch.div(u - fh, stride, rounding_mode="floor") + 1, 0)
    cols = torch.where(v >= fw, torch.div(v - fw, stride, rounding_mode="floor") + 1, 0)
    return torch.maximum(rows, cols)


class SimBA(Attack):
    name = "simba"
    norm = "linf"
    kind = AttackKind.BLACK_BOX

    def __init__(self, eps: float = 4 / 255, iterations: int = 1000, basis: str = "pixel",
                 freq_dims: int | None = None, stride: int = 1, order: str = "random"):
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
        if int(stride) != stride or int(stride) < 1:
            raise SpecError(f"simba: stride (the width of the DCT shells after the initial block) must be a whole "
                            f"number ≥ 1, got {stride}; e.g. stride=1")
        if basis != "dct" and stride != attack_defaults(SimBA)["stride"]:
            raise SpecError("simba: stride only applies to basis='dct'; leave it unset for the pixel basis")
        # the pixel basis does not store stride, so its parameters (and run hashes) stay as they were
        extra = {"stride": int(stride)} if basis == "dct" else {}
        super().__init__(eps=float(eps), iterations=int(iterations), basis=basis, freq_dims=freq_dims, **extra,
                         order=order)
        self.last_iterations: torch.Tensor | None = None

    def block(self, height: int, width: int) -> tuple[int, int]:
        """(fh, fw): the initial low-frequency block of the DCT basis for an H × W image."""
        side = self.params["freq_dims"] or max(min(height, width) // 8, 1)
        return min(side, height), min(side, width)

    def check_input(self, shape: tuple[int, ...]) -> None:
        """SpecError when `iterations` exceeds the C·H·W basis directions of images of shape (B, C, H, W)."""
        channels, height, width = (int(n) for n in shape[-3:])
        limit, iterations = channels * height * width, self.params["iterations"]
        if iterations > limit:
            what = "one per coordinate" if self.params["basis"] == "pixel" else "one per channel and 2-D frequency"
            raise SpecError(f"simba: iterations={iterations} exceeds the {limit} basis directions of a "
                            f"{channels}×{height}×{width} image ({self.params['basis']} basis: {what}); "
                            f"use -p iterations={limit} or fewer")

    def _order(self, shape, generator: torch.Generator) -> torch.Tensor:
        """(B, N) CPU indices c·H·W + u·W + v of the basis directions in the order they are tried; for the DCT
        basis N covers the shells only when `iterations` reaches past the initial block."""
        batch, channels, height, width = shape
        if self.params["basis"] == "pixel":
            count = channels * height * width
            keys = torch.zeros(batch, count, dtype=torch.float64)
            if self.params["order"] == "random":  # uniform in [0, 1): a random permutation
                keys = keys + torch.rand(batch, count, generator=generator, dtype=torch.float64)
            return torch.argsort(keys, dim=1, stable=True)
        fh, fw = self.block(height, width)
        first = self._block_order(batch, channels, fh, fw, generator)
        channel, u, v = first // (fh * fw), (first // fw) % fh, first % fw
        first = channel * height * width + u * width + v
        if self.params["iterations"] <= first.shape[1]:
            return first
        return torch.cat([first, self._shell_order(shape, (fh, fw), generator)], dim=1)

    def _block_order(self, batch, channels, fh, fw, generator) -> torch.Tensor:
        """(B, C·fh·fw) indices c·fh·fw + u·fw + v of the initial block: by diagonal u + v, random within one."""
        count = channels * fh * fw
        index = torch.arange(count)
        keys = ((index // fw) % fh + index % fw).to(torch.float64).expand(batch, count)
        if self.params["order"] == "random":  # uniform in [0, 1): shuffles within a diagonal
            keys = keys + torch.rand(batch, count, generator=generator, dtype=torch.float64)
        return torch.argsort(keys, dim=1, stable=True)

    def _shell_order(self, shape, block, generator) -> torch.Tensor:
        """(B, C·(H·W − fh·fw)) indices c·H·W + u·W + v of the directions outside the initial block, shell by
        shell, random within a shell (over channel and (u, v)); "fixed": by u + v, then channel, u, v."""
        batch, channels, height, width = shape
        shell = shell_index(height, width, block, self.params["stride"]).flatten().repeat(channels)
        rest = (shell > 0).nonzero().flatten()
        shell = shell[rest].to(torch.float64)
        if self.params["order"] == "random":
            keys = shell + torch.rand(batch, rest.numel(), generator=generator, dtype=torch.float64)
        else:
            diagonal = ((rest // width) % height + rest % width).to(torch.float64)
            keys = (shell * (height + width) + diagonal).expand(batch, rest.numel())
        return rest[torch.argsort(keys, dim=1, stable=True)]

    def _direction(self, index: torch.Tensor, like: torch.Tensor, dct) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each image's basis direction, for index c·H·W + u·W + v (on the device): ((c, u, v), None) for the
        pixel basis (q is one-hot); (c, (B, H, W) DCT basis image with max |q| = 1) for the DCT basis."""
        height, width = like.shape[-2:]
        channel, u, v = index // (height * width), (index // width) % height, index % width
        if self.params["basis"] == "pixel":
            return (channel, u, v), None
        dct_rows, dct_cols = dct
        basis = dct_rows[u][:, :, None] * dct_cols[v][:, None, :]  # (B, H, W)
        return channel, basis / basis.flatten(1).abs().amax(dim=1)[:, None, None]

    def _candidate(self, adversarial: torch.Tensor, direction, sign: float, bounds) -> torch.Tensor:
        """x + sign·eps·q, projected onto {‖δ‖∞ ≤ eps} ∩ [0, 1] (`bounds` = (y − eps, y + eps)). Only q's support
        is written: elsewhere q = 0 and x + 0 = x, so this equals the full-size x + sign·eps·q bit for bit."""
        step = sign * self.params["eps"]
        where, basis = direction
        rows = torch.arange(adversarial.shape[0], device=adversarial.device)
        candidate = adversarial.clone()
        if basis is None:
            candidate[(rows, *where)] += step
        else:
            candidate[rows, where] += step * basis
        lower, upper = bounds
        return candidate.clamp_(lower, upper).clamp_(0.0, 1.0)

    def perturb(self, model, degraded, objective, reference, generator):
        self.check_input(degraded.shape)
        eps, iterations = self.params["eps"], self.params["iterations"]
        degraded = degraded.detach()
        batch, _, height, width = degraded.shape
        order = self._order(degraded.shape, generator)[:, :iterations].to(degraded.device)
        dct = tuple(dct_matrix(size, degraded.dtype).to(degraded.device) for size in (height, width))
        with torch.no_grad():  # outside inference mode: whatever the objective or model builds on its first call
            value = self.value(model, degraded, objective, reference)  # (e.g. LPIPS weights) stays autograd-safe
        adversarial, queries = degraded.clone(), torch.ones(batch, dtype=torch.int64)
        with torch.inference_mode():  # in-place updates keep adversarial, value and queries normal tensors
            bounds = (degraded - eps, degraded + eps)
            for step in range(iterations):
                direction = self._direction(order[:, step], degraded, dct)
                self._try_both_signs(model, objective, reference, adversarial, value, queries, direction, bounds)
        self.last_queries = queries
        self.last_iterations = torch.full((batch,), iterations, dtype=torch.int64)
        return adversarial

    def _try_both_signs(self, model, objective, reference, adversarial, value, queries, direction, bounds) -> None:
        """One iteration, in place: +eps·q for every image, then −eps·q for those whose objective did not rise;
        a candidate is kept where its objective rises strictly. Only images whose candidate differs from their
        iterate are evaluated (one query each), together in one forward pass."""
        pending = torch.ones(adversarial.shape[0], dtype=torch.bool)  # on the CPU: which images still try
        for sign in (1.0, -1.0):
            candidate = self._candidate(adversarial, direction, sign, bounds)
            todo = pending & (candidate != adversarial).flatten(1).any(dim=1).cpu()
            rows = todo.nonzero().flatten()
            if rows.numel() == 0:
                continue
            queries += todo
            index = rows.to(adversarial.device)
            tried = self.value(model, candidate[index], objective, reference[index])
            better = tried > value[index]
            kept = index[better]
            adversarial[kept] = candidate[kept]
            value[kept] = tried[better]
            pending[rows[better.cpu()]] = False
            if not pending.any():
                break


register_attack_class(SimBA, paper="Guo et al., ICML 2019")
