"""Carlini–Wagner L2 (C&W-L2), adapted to restoration, in two forms chosen by `const`:
  const unset (None, the default): minimum norm — the smallest L2 perturbation that reaches a deviation target
      (instead of the smallest one that flips a label), by a binary search over c; its attacked PSNR is the
      target itself, and what it measures is ‖δ‖₂.
  const = c > 0: fixed trade-off — minimise ‖δ‖₂² − c·deviation for one given c, no search and no target; its
      attacked PSNR is what c buys, the number a study reporting "C&W: X dB" gives.

Carlini and Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.

Distance: L2 over all pixels and channels of one image; no eps budget — the budget is the deviation target
(minimum norm) or c (fixed trade-off). Both forms drive the mean squared deviation of f(y') from the
objective's reference (evaluated through `Attack.value`, so EOT composes); the objective supplies the reference
and the direction (`targeted`: the deviation is −MSE to the target, so it rises either way). For the MSE
objectives (mse-clean, mse-gt, targeted:*) that is the objective itself; for l1-clean or lpips-clean the attack
still drives (and ranks by) the squared deviation. Both optimise over w with y' = (tanh(w) + 1)/2 (so
y' ∈ [0, 1] without clipping) by Adam, starting from w = atanh((2y − 1)·(1 − 1e-6)); as in the paper, pixels
at exactly 0 or 1 barely move (tanh saturates there). Deterministic; the generator is not used.

Minimum-norm form. Success for an image: PSNR(f(y'), reference) ≤ target_psnr − confidence (targeted:
PSNR ≥ target_psnr + confidence). Per image it minimises

    ‖y' − y‖₂² + c · max(PSNR(f(y'), reference) − target_psnr, −confidence)      (targeted: sign flipped)

— the paper's f₆ hinge max(margin, −κ), with the margin measured in dB. Why dB rather than the protocol's
‖δ‖² − c·objective: MSE values span 1e-6 (clean) to 1e-2 (20 dB), so a linear term needs a c of 1e2–1e4 that
shifts with the image, and it keeps rewarding deviation past the target (inflating ‖δ‖); the log margin is
scale-free and the hinge stops at the target, so for any c above a threshold the minimiser is the
smallest-norm point on the target's boundary. c scales with the pixel count (about 0.1–0.4 on 32×32 images
and 6 on 128×128 for a small net), hence c_init 1.0 and the ×10 growth.
Binary search over c per image, as in the paper: on success c_hi = c, else c_lo = c; the next c is
(c_lo + c_hi)/2 once an upper bound exists, else 10·c. Two changes from the paper's loop (which restarts
every search step from y), both needed to beat PGD-L2's norm with 100 steps: each search step warm-starts w
(with a fresh Adam) from the smallest success so far, or before any success from the iterate with the largest
deviation — so the ×10 phase accumulates progress instead of repeating one path; and a search step counts as
a success when its final iterate succeeds — Adam's first steps overshoot, and such a transient success would
drive c below what holds the target.
Per image the successful y' with the smallest ‖δ‖₂ over all iterates is returned; if none succeeded, the y'
with the largest deviation (y itself if nothing beat it); if y already reaches the target, y.

Fixed trade-off form (the classical restoration adaptation, "minimise ‖δ‖² − c·objective"). Per image it
minimises, by `steps` Adam steps on w (one run, no restarts, no early abort),

    ‖y' − y‖₂² − c · N · MSE(f(y'), reference)       (targeted: + c · N · MSE to the target)

with N the number of values in one output image (3·H·W): N·MSE is the sum of squared errors, so both terms
sum squared [0, 1] differences over the same pixels and c is a plain exchange rate — one unit of output
squared error is worth 1/c units of input squared perturbation — that does not change with the image size
(with the bare MSE, the c that matters would grow with H·W). A convolutional net's local gain decides the
useful range: for a locally linear f with largest gain σ, y is a minimiser while c·σ² < 1, so small c return
y unchanged and the attacked PSNR falls steeply once c passes 1/σ², then saturates (the tests' small random
net, 100 steps: about 65, 15, 12 and 10 dB at c = 0.01, 0.03, 0.1 and 1, on 32×32 and 64×64 images within a
dB). A study's c on the mean squared error of its N-value images is const = c/N here. Returned per image:
the iterate of lowest loss, y itself included (‖δ‖ = 0) — the point the stated loss selects for this c,
rather than the largest-deviation iterate, which is often an Adam overshoot with a ‖δ‖ that c did not set.
Since its loss is below y's, its deviation is at least y's (an iterate below y's deviation is never taken,
even by rounding), and for exact minimisers the deviation can only grow with c.

Arguments: const (None: minimum-norm form; a positive finite number: the fixed trade-off c), steps (100:
Adam steps per binary-search step, or of the one fixed-c run), lr (0.01, Adam on w, as in the paper; the
fixed form at a large c can reach lower PSNRs with more steps or a larger lr — it is not convex), and for the
minimum-norm form only: target_psnr (20.0 dB), confidence κ (0.0 dB), c_init (1.0), search_steps (9, as in
the reference study), abort_early (True: as in the paper's code, a search step ends when its loss fell by
less than 0.1 % over the last steps/10 steps). Setting any of these five to a non-default value together with
const is a SpecError (they would be ignored). With const the attack's params are {const, steps, lr}; without
it they are the five plus steps and lr, exactly as before const existed (so stored run hashes still match).
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    attack = make_attack("cw", target_psnr=20.0)      # minimum norm for a 20 dB deviation
    attack = make_attack("cw", const=0.1, steps=1000)  # fixed trade-off: report the attacked PSNR
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from udcbench.attacks.base import Attack, AttackKind, BestTracker, attack_defaults, register_attack_class
from udcbench.errors import SpecError
from udcbench.metrics.fidelity import per_image_mse

NO_UPPER_BOUND = 1e10


@dataclass(frozen=True)
class SquaredDeviation:
    """The objective C&W drives: MSE of f(y') to the reference (−MSE when targeted, so it rises either way)."""

    targeted: bool = False

    def __call__(self, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        mse = per_image_mse(output, reference)
        return -mse if self.targeted else mse


def value_to_psnr(value: torch.Tensor, targeted: bool) -> torch.Tensor:
    """PSNR (dB, data range 1) from a SquaredDeviation value; differentiable, finite at a zero deviation."""
    distance = -value if targeted else value
    return -10.0 * torch.log10(distance.clamp_min(0.0) + 1e-20)


def check_const(const, **search) -> float:
    """The fixed trade-off constant c, validated; refuses a binary-search parameter that c would leave unused."""
    if isinstance(const, bool) or not isinstance(const, numbers.Real) or not math.isfinite(const) or const <= 0:
        raise SpecError(f"cw: const (the fixed trade-off constant c) must be a positive finite number, got "
                        f"{const!r}; e.g. const=1.0, or leave it unset for the minimum-norm search")
    defaults = attack_defaults(CarliniWagnerL2)
    ignored = [f"{key}={value}" for key, value in search.items() if value != defaults[key]]
    if ignored:
        raise SpecError(f"cw: const={const:g} fixes c (no binary search, no deviation target), so "
                        f"{', '.join(ignored)} would be ignored; drop {'them' if len(ignored) > 1 else 'it'}, or "
                        f"drop const for the minimum-norm search form")
    return float(const)


class CarliniWagnerL2(Attack):
    name = "cw"
    norm = "l2"
    kind = AttackKind.WHITE_BOX

    def __init__(self, target_psnr: float = 20.0, confidence: float = 0.0, c_init: float = 1.0, steps: int = 100,
                 search_steps: int = 9, lr: float = 0.01, abort_early: bool = True, const: float | None = None):
        if not math.isfinite(target_psnr) or target_psnr <= 0:
            raise SpecError(f"cw: target_psnr (dB of f(y') against the reference) must be positive and finite, "
                            f"got {target_psnr:g}; e.g. target_psnr=20")
        if not confidence >= 0:
            raise SpecError(f"cw: confidence κ (a margin in dB beyond the target) must be ≥ 0, got {confidence:g}")
        if not c_init > 0 or not lr > 0:
            raise SpecError(f"cw: c_init and lr must be positive, got c_init={c_init:g}, lr={lr:g}")
        for label, count in (("steps", steps), ("search_steps", search_steps)):
            if int(count) != count or int(count) < 1:
                raise SpecError(f"cw: {label} must be a whole number ≥ 1, got {count}")
        if const is not None:  # the fixed-constant form: its params name only what it uses
            super().__init__(const=check_const(const, target_psnr=target_psnr, confidence=confidence,
                                               c_init=c_init, search_steps=search_steps, abort_early=abort_early),
                             steps=int(steps), lr=float(lr))
            return
        # the minimum-norm form keeps exactly its former params (no const key), so stored run hashes still match
        super().__init__(target_psnr=float(target_psnr), confidence=float(confidence), c_init=float(c_init),
                         steps=int(steps), search_steps=int(search_steps), lr=float(lr),
                         abort_early=bool(abort_early))

    def margin(self, value: torch.Tensor, targeted: bool) -> torch.Tensor:
        """dB still to go: ≤ −confidence means success."""
        psnr = value_to_psnr(value, targeted)
        return (self.params["target_psnr"] - psnr) if targeted else (psnr - self.params["target_psnr"])

    def perturb(self, model, degraded, objective, reference, generator):
        targeted = bool(getattr(objective, "targeted", False))
        if self.params.get("const") is not None:
            return self._fixed_constant(model, degraded.detach(), reference, SquaredDeviation(targeted))
        return self._minimum_norm(model, degraded.detach(), reference, targeted)

    def _fixed_constant(self, model, degraded, reference, deviation):
        """Minimise ‖y' − y‖₂² − c·N·deviation over w by Adam; per image the lowest-loss point (y included)."""
        p = self.params
        scale = p["const"] * reference[0].numel()  # N·MSE = the sum of squared errors over the output
        with torch.no_grad():
            start_value = self.value(model, degraded, deviation, reference)
        best, best_loss = degraded.clone(), -scale * start_value  # y itself: ‖δ‖ = 0
        w = torch.atanh((2 * degraded - 1) * (1 - 1e-6)).requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=p["lr"])
        for step in range(p["steps"] + 1):
            last = step == p["steps"]  # the final iterate is only scored
            with torch.set_grad_enabled(not last):
                adversarial = (torch.tanh(w) + 1) / 2
                value = self.value(model, adversarial, deviation, reference)
                loss = (adversarial - degraded).pow(2).flatten(1).sum(dim=1) - scale * value
            with torch.no_grad():
                better = (loss < best_loss) & (value >= start_value)  # never below y's objective, even by rounding
                best = torch.where(better[:, None, None, None], adversarial, best)
                best_loss = torch.where(better, loss, best_loss)
            if last:
                break
            optimiser.zero_grad(set_to_none=True)
            loss.sum().backward()  # images are independent: Adam is elementwise
            optimiser.step()
        return best.detach()

    def _minimum_norm(self, model, degraded, reference, targeted):
        """The binary search over c for the smallest ‖δ‖₂ that reaches the deviation target."""
        p = self.params
        deviation = SquaredDeviation(targeted)
        batch = degraded.shape[0]
        with torch.no_grad():
            start_value = self.value(model, degraded, deviation, reference)
        fallback = BestTracker(degraded, start_value)
        best = degraded.clone()
        best_norm = torch.full((batch,), math.inf, dtype=degraded.dtype, device=degraded.device)
        best_norm[self.margin(start_value, targeted) <= -p["confidence"]] = 0.0  # y already reaches the target
        if torch.all(best_norm == 0):
            return best

        w_start = torch.atanh((2 * degraded - 1) * (1 - 1e-6))
        best_w, strongest_w = w_start.clone(), w_start.clone()
        c = torch.full((batch,), p["c_init"], dtype=degraded.dtype, device=degraded.device)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, NO_UPPER_BOUND)
        for _ in range(p["search_steps"]):
            found = torch.isfinite(best_norm)[:, None, None, None]
            w = torch.where(found, best_w, strongest_w).requires_grad_(True)  # warm start
            optimiser = torch.optim.Adam([w], lr=p["lr"])
            checkpoint = math.inf
            for step in range(p["steps"] + 1):
                last = step == p["steps"]  # the final iterate is only scored
                with torch.set_grad_enabled(not last):
                    adversarial = (torch.tanh(w) + 1) / 2
                    value = self.value(model, adversarial, deviation, reference)
                    norm_squared = (adversarial - degraded).pow(2).flatten(1).sum(dim=1)
                    margin = self.margin(value, targeted)
                with torch.no_grad():
                    success = margin <= -p["confidence"]
                    smaller = success & (norm_squared.sqrt() < best_norm)
                    best = torch.where(smaller[:, None, None, None], adversarial, best)
                    best_norm = torch.where(smaller, norm_squared.sqrt(), best_norm)
                    best_w = torch.where(smaller[:, None, None, None], w.detach(), best_w)
                    stronger = value > fallback.value
                    strongest_w = torch.where(stronger[:, None, None, None], w.detach(), strongest_w)
                    fallback.update(adversarial, value)
                if last:
                    break
                loss = norm_squared + c * torch.clamp(margin, min=-p["confidence"])
                if p["abort_early"] and step % max(p["steps"] // 10, 1) == 0 and step > 0:
                    if loss.sum().item() > 0.999 * checkpoint:
                        break  # converged: the iterate just scored is this search step's result
                    checkpoint = loss.sum().item()
                optimiser.zero_grad(set_to_none=True)
                loss.sum().backward()  # images are independent: Adam is elementwise
                optimiser.step()
            succeeded = success  # the converged (final) iterate decides, not a transient
            with torch.no_grad():
                upper = torch.where(succeeded, torch.minimum(upper, c), upper)
                lower = torch.where(succeeded, lower, torch.maximum(lower, c))
                c = torch.where(upper < NO_UPPER_BOUND, (lower + upper) / 2, c * 10)
        found = torch.isfinite(best_norm)
        return torch.where(found[:, None, None, None], best, fallback.adversarial).detach()


register_attack_class(CarliniWagnerL2,
                      paper="Carlini & Wagner, IEEE S&P 2017 (L2; deviation target instead of a label)")
