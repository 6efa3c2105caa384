"""Projected gradient descent (PGD), L2.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (the L2 variant:
normalised gradient steps, projection onto the L2 ball).

Distance: L2 over all pixels and channels of one image, ‖δ‖₂ ≤ eps, and y + δ ∈ [0, 1].
Arguments: eps (1.0), alpha (None -> 2.5·eps/steps, the step rule of Madry et al.'s `robustness` library:
the iterates can cross the ball 2.5 times), steps (20), random_start (True: δ uniform in the L2 ball — a
Gaussian direction and radius eps·U^(1/d), d = C·H·W — then clipped to [0, 1]), restarts (1; the
strongest result per image is kept).
Each step moves by alpha·∇/‖∇‖₂ (per image), then projects onto the ball and [0, 1]. The best iterate per
image is returned (so more steps never give a weaker result for the same seed).
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    attack = make_attack("pgd-l2", eps=1.0, steps=20)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import math

import torch

from udcbench.attacks.base import (Attack, AttackKind, BestTracker, check_alpha, check_steps, cpu_rand, l2_normalise,
                                   project_l2, register_attack_class)
from udcbench.errors import SpecError


def uniform_l2_ball(degraded: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """δ uniform in the L2 ball of radius eps, per image (Gaussian direction by Box–Muller on CPU draws)."""
    u1 = 1.0 - cpu_rand(degraded.shape, generator, degraded)  # (0, 1]: log is finite
    u2 = cpu_rand(degraded.shape, generator, degraded)
    gaussian = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    dimension = degraded[0].numel()
    radius = eps * cpu_rand((degraded.shape[0],), generator, degraded).pow(1.0 / dimension)
    return l2_normalise(gaussian) * radius[:, None, None, None]


class PGDL2(Attack):
    name = "pgd-l2"
    norm = "l2"
    kind = AttackKind.WHITE_BOX

    def __init__(self, eps: float = 1.0, alpha: float | None = None, steps: int = 20, random_start: bool = True,
                 restarts: int = 1):
        if not eps > 0:
            raise SpecError(f"pgd-l2: eps (the L2 norm of δ over the whole image) must be positive, got {eps:g}; "
                            "e.g. eps=1.0")
        steps = check_steps("pgd-l2", steps)
        alpha = check_alpha("pgd-l2", 2.5 * eps / max(steps, 1) if alpha is None else alpha)
        if int(restarts) != restarts or int(restarts) < 1:
            raise SpecError(f"pgd-l2: restarts must be a whole number ≥ 1, got {restarts}")
        super().__init__(eps=float(eps), alpha=alpha, steps=steps, random_start=bool(random_start),
                         restarts=int(restarts))

    def perturb(self, model, degraded, objective, reference, generator):
        eps, alpha, steps = self.params["eps"], self.params["alpha"], self.params["steps"]
        degraded = degraded.detach()
        with torch.no_grad():
            best = BestTracker(degraded, self.value(model, degraded, objective, reference))
        for _ in range(self.params["restarts"]):
            adversarial = degraded.clone()
            if self.params["random_start"]:
                adversarial = project_l2(degraded + uniform_l2_ball(degraded, eps, generator), degraded, eps)
            self.ascend(model, adversarial, objective, reference, steps, best=best,
                        update=lambda x, grad: project_l2(x + alpha * l2_normalise(grad), degraded, eps))
        return best.adversarial


register_attack_class(PGDL2, paper="Madry et al., ICLR 2018 (L2 variant)")
