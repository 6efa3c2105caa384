"""Momentum iterative FGSM (MI-FGSM) and its input-diversity form (DI-FGSM), L∞: transfer boosters.

MI-FGSM: Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018.
DI-FGSM: Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity", CVPR 2019.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
mifgsm arguments: eps (8/255), alpha (None -> eps/steps, as in the paper), steps (20), decay μ (1.0).
Each step g ← μ·g + ∇/mean|∇| (per image), y' ← clip(y' + alpha·sign(g)); no random start.
difgsm arguments: the same plus probability p (0.5) and resize_rate (1.1). With decay 1.0 this is M-DI²-FGSM,
the form commonly used; decay=0 gives the paper's plain DI²-FGSM. At each gradient evaluation, with
probability p the input is resized (nearest neighbour, as in the paper) to r×r', r drawn in
[H, int(H·resize_rate)) and r' = round(W·r/H) (aspect kept), then zero-padded at a random offset to
int(H·resize_rate)×int(W·resize_rate). The paper classifies the transformed image; our models are
image-to-image, so their output is brought back to the original geometry before the objective compares it
with the reference: the resized region is cropped out of the output and resized back to H×W (nearest-exact,
which undoes the input resize exactly). The draws (one per model call) come from the passed generator.
The best iterate per image — scored on the untransformed model (one extra forward pass per step) — is
returned. Under a mask the restriction y + mask·δ must precede the transform: `DiverseModel` uses the mask
wrapper's `restrict` and `unrestricted` hooks for that.
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W). One draw serves the whole batch (as in the paper).

    attack = make_attack("mifgsm", eps=8/255, steps=20)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from udcbench.attacks.base import (Attack, AttackKind, BestTracker, check_alpha, check_linf_eps, check_steps,
                                   cpu_rand, project_linf, register_attack_class)
from udcbench.errors import SpecError

RESIZE_MODE = "nearest-exact"  # pixel-centre nearest neighbour: up then down by the same sizes is the identity


@dataclass(frozen=True)
class Geometry:
    """One diversity draw: the image is resized to (height, width) and placed at (top, left) of a zero canvas
    of (canvas_height, canvas_width)."""

    height: int
    width: int
    top: int
    left: int
    canvas_height: int
    canvas_width: int


def draw_geometry(draws: torch.Tensor, size: tuple[int, int], probability: float,
                  resize_rate: float) -> Geometry | None:
    """From four U(0,1) draws: None (identity) when draws[0] ≥ probability, else a random resize + pad."""
    apply, scale, top, left = (float(d) for d in draws)
    if apply >= probability:
        return None
    height, width = size
    canvas_height, canvas_width = max(height, int(height * resize_rate)), max(width, int(width * resize_rate))
    new_height = min(height + int(scale * (canvas_height - height)), canvas_height)
    new_width = min(max(width, round(width * new_height / height)), canvas_width)
    top = min(int(top * (canvas_height - new_height + 1)), canvas_height - new_height)  # uniform over offsets
    left = min(int(left * (canvas_width - new_width + 1)), canvas_width - new_width)
    return Geometry(new_height, new_width, top, left, canvas_height, canvas_width)


def diversify(image: torch.Tensor, geometry: Geometry | None) -> torch.Tensor:
    """Resize and zero-pad `image` per `geometry` (differentiable); None is the identity."""
    if geometry is None:
        return image
    g = geometry
    resized = F.interpolate(image, size=(g.height, g.width), mode=RESIZE_MODE)
    return F.pad(resized, (g.left, g.canvas_width - g.width - g.left, g.top, g.canvas_height - g.height - g.top))


def undiversify(output: torch.Tensor, geometry: Geometry | None, size: tuple[int, int]) -> torch.Tensor:
    """The inverse geometry on a model output: crop the resized region, resize back to `size`."""
    if geometry is None:
        return output
    g = geometry
    region = output[..., g.top:g.top + g.height, g.left:g.left + g.width]
    return F.interpolate(region, size=size, mode=RESIZE_MODE)


class DiverseModel:
    """model ∘ diversity: each call draws a fresh geometry from `generator`, transforms the input, runs the
    model and maps the output back to the input's geometry. Passed to `Attack.value`, so EOT still composes.

    A model restricted to a mask (`Attack.__call__(..., mask=...)`) works in the input's geometry, so the
    restriction must come before the transform: when the model carries `restrict` (x ↦ y + mask·(x − y)) and
    `unrestricted` (the model inside), the input is restricted, transformed, then fed to the unrestricted one."""

    def __init__(self, model, generator: torch.Generator, probability: float, resize_rate: float):
        self.restrict = getattr(model, "restrict", None)
        self.model = getattr(model, "unrestricted", model) if self.restrict is not None else model
        self.generator, self.probability, self.resize_rate = generator, probability, resize_rate
        for name in ("contract", "info", "extras"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        draws = cpu_rand((4,), self.generator, torch.empty(0))
        size = tuple(image.shape[-2:])
        geometry = draw_geometry(draws, size, self.probability, self.resize_rate)
        if self.restrict is not None:
            image = self.restrict(image)
        return undiversify(self.model(diversify(image, geometry)), geometry, size)


class MIFGSM(Attack):
    name = "mifgsm"
    norm = "linf"
    kind = AttackKind.WHITE_BOX

    def __init__(self, eps: float = 8 / 255, alpha: float | None = None, steps: int = 20, decay: float = 1.0):
        eps, steps = check_linf_eps(self.name, eps), check_steps(self.name, steps)
        alpha = check_alpha(self.name, eps / max(steps, 1) if alpha is None else alpha)
        if not decay >= 0:
            raise SpecError(f"{self.name}: decay μ must be ≥ 0 (1.0 in the paper), got {decay:g}")
        super().__init__(eps=eps, alpha=alpha, steps=steps, decay=float(decay))

    def gradient_model(self, model, generator):
        """The model whose gradient drives the steps (DI-FGSM wraps it with input diversity)."""
        return model

    def perturb(self, model, degraded, objective, reference, generator):
        eps, alpha, steps, decay = (self.params[k] for k in ("eps", "alpha", "steps", "decay"))
        degraded = degraded.detach()
        attacked = self.gradient_model(model, generator)
        separate = attacked is not model  # then the gradient's value is not the true objective: score apart
        adversarial = degraded.clone()
        momentum = torch.zeros_like(degraded)
        best = None
        for step in range(steps + 1):
            last = step == steps
            if separate or last:
                with torch.no_grad():
                    value = self.value(model, adversarial, objective, reference)
            if not last:
                adversarial.requires_grad_(True)
                gradient_value = self.value(attacked, adversarial, objective, reference)
                (grad,) = torch.autograd.grad(gradient_value.sum(), adversarial)
                adversarial = adversarial.detach()
                if not separate:
                    value = gradient_value.detach()
            if best is None:
                best = BestTracker(adversarial, value)
            else:
                best.update(adversarial, value)
            if last:
                break
            with torch.no_grad():
                l1 = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
                momentum = decay * momentum + grad / l1[:, None, None, None]
                adversarial = project_linf(adversarial + alpha * momentum.sign(), degraded, eps)
        return best.adversarial


class DIFGSM(MIFGSM):
    name = "difgsm"

    def __init__(self, *, probability: float = 0.5, resize_rate: float = 1.1, **base):
        """mifgsm's parameters (`base`: eps, alpha, steps, decay), then probability and resize_rate."""
        if not 0 <= probability <= 1:
            raise SpecError(f"difgsm: probability (of transforming the input) must lie in [0, 1], got "
                            f"{probability:g}")
        if not resize_rate >= 1:
            raise SpecError(f"difgsm: resize_rate must be ≥ 1 (the input is enlarged up to this factor), got "
                            f"{resize_rate:g}; e.g. 1.1")
        super().__init__(**base)
        self.params.update(probability=float(probability), resize_rate=float(resize_rate))

    def gradient_model(self, model, generator):
        return DiverseModel(model, generator, self.params["probability"], self.params["resize_rate"])


register_attack_class(MIFGSM, paper="Dong et al., CVPR 2018")
register_attack_class(DIFGSM, paper="Xie et al., CVPR 2019 (with momentum: M-DI²-FGSM)")
