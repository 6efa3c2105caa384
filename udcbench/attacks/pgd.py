"""Projected gradient descent (PGD), L∞.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018; for restoration,
Yu et al., "Towards Robust Rain Removal Against Adversarial Attacks", CVPR 2022 (ε ∈ {1,2,4,8}/255,
α = ε/4, 20 steps, MSE to the clean output).

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
Arguments: eps (8/255), alpha (None -> eps/4), steps (20), random_start (True: δ ~ U(−eps, eps)),
restarts (1; the strongest result per image is kept).
Each step ascends the objective by alpha·sign(∇δ), then projects onto the ε-ball and [0, 1]. The best iterate
per image is returned (so more steps never give a weaker result for the same seed).
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    attack = make_attack("pgd", eps=8/255, steps=20)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import torch

from udcbench.attacks.base import Attack, AttackKind, BestTracker, cpu_rand, project_linf, register_attack_class
from udcbench.errors import SpecError


class PGD(Attack):
    name = "pgd"
    norm = "linf"
    kind = AttackKind.WHITE_BOX

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 20,
                 random_start: bool = True, restarts: int = 1):
        if not 0 < eps <= 1:
            raise SpecError(f"pgd: eps must lie in (0, 1], got {eps:g}")
        alpha = eps / 4 if alpha is None else alpha
        if alpha <= 0:
            raise SpecError(f"pgd: alpha must be positive, got {alpha:g}")
        if int(steps) < 0 or int(restarts) < 1:
            raise SpecError(f"pgd: steps must be ≥ 0 and restarts ≥ 1, got steps={steps}, restarts={restarts}")
        super().__init__(eps=float(eps), alpha=float(alpha), steps=int(steps), random_start=bool(random_start),
                         restarts=int(restarts))

    stacks_eps = True  # perturb_budgets: several (eps, alpha) in one pass

    def perturb(self, model, degraded, objective, reference, generator):
        return self._run(model, degraded.detach(), objective, reference, generator, self.params["eps"],
                         self.params["alpha"])

    def perturb_budgets(self, model, degraded, objective, reference, generator, budgets) -> list[torch.Tensor]:
        """The attack at K budgets [(eps, alpha), ...] in one pass over a K-times larger batch (`model` must
        take K·B images): returns K results, each what perturb() gives with that budget — the same random
        start (drawn once, as each separate run draws it from the same seed) and the same steps, up to the
        float summation order of the larger batch."""
        count, batch = len(budgets), degraded.shape[0]

        def column(values):
            return torch.tensor(values, dtype=degraded.dtype).repeat_interleave(batch).view(-1, 1, 1, 1).to(
                degraded.device)

        eps, alpha = column([e for e, _ in budgets]), column([a for _, a in budgets])
        stacked = self._run(model, degraded.detach().repeat(count, 1, 1, 1), objective,
                            reference.repeat(count, *[1] * (reference.dim() - 1)), generator, eps, alpha, count)
        return list(stacked.split(batch))

    def _run(self, model, degraded, objective, reference, generator, eps, alpha, copies: int = 1):
        """PGD on `degraded` (B·copies images: `copies` stacked copies of B) with eps / alpha as numbers or
        (B·copies, 1, 1, 1) tensors; each random start is drawn for B images and shared by the copies."""
        with torch.no_grad():
            best = BestTracker(degraded, self.value(model, degraded, objective, reference))
        for _ in range(self.params["restarts"]):
            adversarial = degraded.clone()
            if self.params["random_start"]:  # drawn on the CPU so a seed gives the same start on any device
                single = degraded[:degraded.shape[0] // copies]
                noise = cpu_rand(single.shape, generator, single).repeat(copies, 1, 1, 1)
                adversarial = project_linf(degraded + (2 * noise - 1) * eps, degraded, eps)
            self.ascend(model, adversarial, objective, reference, self.params["steps"], best=best,
                        update=lambda x, grad: project_linf(x + alpha * grad.sign(), degraded, eps))
        return best.adversarial


register_attack_class(PGD, paper="Madry et al., ICLR 2018; restoration protocol of Yu et al., CVPR 2022")
