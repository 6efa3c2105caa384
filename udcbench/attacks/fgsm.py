"""Fast gradient sign method (FGSM) and its iterative form (I-FGSM, also called BIM), L∞.

FGSM: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
I-FGSM / BIM: Kurakin, Goodfellow and Bengio, "Adversarial Examples in the Physical World", ICLR workshop 2017.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
fgsm arguments: eps (8/255). One step y' = clip(y + eps·sign(∇y)); no random start. Per image the better of
y and y' is returned, so the objective never falls below its clean value (a single sign step on a curved
objective can overshoot).
ifgsm arguments: eps (8/255), alpha (None -> 1/255, the paper's "change each pixel by 1 per step"),
steps (20; the paper uses min(255·eps + 4, 1.25·255·eps), i.e. 10 at 8/255 — 20 matches our PGD budget).
No random start. Each step ascends by alpha·sign(∇), then clips to the ε-ball and [0, 1]; the best iterate per
image is returned. Pass alpha=eps/steps for the I-FGSM baseline of the MI-FGSM paper (Dong et al. 2018).
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    attack = make_attack("ifgsm", eps=8/255, steps=20)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

import torch

from udcbench.attacks.base import (Attack, AttackKind, BestTracker, check_alpha, check_linf_eps, check_steps,
                                   project_linf, register_attack_class)


class FGSM(Attack):
    name = "fgsm"
    norm = "linf"
    kind = AttackKind.WHITE_BOX

    def __init__(self, eps: float = 8 / 255):
        super().__init__(eps=check_linf_eps("fgsm", eps))

    def perturb(self, model, degraded, objective, reference, generator):
        eps = self.params["eps"]
        start = degraded.detach().clone().requires_grad_(True)
        value = self.value(model, start, objective, reference)
        (grad,) = torch.autograd.grad(value.sum(), start)
        best = BestTracker(degraded, value)
        with torch.no_grad():
            stepped = project_linf(degraded + eps * grad.sign(), degraded, eps)
            best.update(stepped, self.value(model, stepped, objective, reference))
        return best.adversarial


class IFGSM(Attack):
    name = "ifgsm"
    norm = "linf"
    kind = AttackKind.WHITE_BOX

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 20):
        eps = check_linf_eps("ifgsm", eps)
        alpha = check_alpha("ifgsm", 1 / 255 if alpha is None else alpha)
        super().__init__(eps=eps, alpha=alpha, steps=check_steps("ifgsm", steps))

    def perturb(self, model, degraded, objective, reference, generator):
        eps, alpha, steps = self.params["eps"], self.params["alpha"], self.params["steps"]
        degraded = degraded.detach()
        best = self.ascend(model, degraded.clone(), objective, reference, steps,
                           update=lambda x, grad: project_linf(x + alpha * grad.sign(), degraded, eps))
        return best.adversarial


register_attack_class(FGSM, paper="Goodfellow et al., ICLR 2015")
register_attack_class(IFGSM, paper="Kurakin et al., ICLR workshop 2017 (BIM)")
