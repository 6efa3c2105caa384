"""Adaptive-attack wrappers: BPDA and EOT, composable with any white-box attack.

BPDA (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018): in the
forward pass a non-differentiable transform g (JPEG, quantisation, median, …) is applied exactly; in the backward
pass the gradient of a differentiable approximation is used instead — the identity by default
(straight-through), or any smooth stand-in the caller gives.

    defended = lambda x: model(bpda(jpeg, approximation=None)(x))     # attack `defended` with any attack

EOT (same paper; Athalye et al., ICML 2018, "Synthesizing Robust Adversarial Examples"): for a randomised
defense, the attack ascends the expectation of the objective over the defense's randomness, estimated by the
mean over k draws (so the gradient is the mean of k gradients). It wraps an attack and replaces its
`value(...)`, through which every attack evaluates the objective:

    attack = eot(make_attack("pgd", eps=8/255), k=4)   # model must draw fresh randomness on every call
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from udcbench.attacks.base import Attack, AttackKind
from udcbench.errors import SpecError


def bpda(transform: Callable[[torch.Tensor], torch.Tensor],
         approximation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x ↦ transform(x) in value, with the gradient of approximation(x) (identity when None)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            exact = transform(x.detach())
        if not x.requires_grad:
            return exact
        smooth = x if approximation is None else approximation(x)
        if smooth.shape != exact.shape:
            raise SpecError(f"bpda: the approximation returns shape {tuple(smooth.shape)} but the transform "
                            f"returns {tuple(exact.shape)}; they must match")
        return exact + (smooth - smooth.detach())  # exact in value (bit for bit), gradient of smooth

    return forward


class EOT(Attack):
    """Expectation over transformation around a white-box attack: every objective evaluation is the mean over
    `k` calls of the (randomised) model. k = 1 is the plain attack."""

    def __init__(self, attack: Attack, k: int = 4):
        if int(k) < 1:
            raise SpecError(f"eot: k (draws per evaluation) must be ≥ 1, got {k}")
        if not AttackKind(attack.kind).white_box:
            raise SpecError(f"eot wraps white-box attacks; {attack.name} is {attack.kind}")
        self.inner = copy.copy(attack)
        self.inner.value = self._expected_value
        self.name = f"eot{int(k)}-{attack.name}"
        self.norm, self.kind = attack.norm, attack.kind
        super().__init__(**attack.params, eot=int(k))

    def _expected_value(self, model, adversarial, objective, reference):
        draws = [objective(model(adversarial), reference) for _ in range(self.params["eot"])]
        return torch.stack(draws).mean(dim=0)

    def value(self, model, adversarial, objective, reference):
        return self._expected_value(model, adversarial, objective, reference)

    def perturb(self, model, degraded, objective, reference, generator):
        self.inner.inputs = self.inputs
        adversarial = self.inner.perturb(model, degraded, objective, reference, generator)
        self.last_queries, self.last_iterations = self.inner.last_queries, self.inner.last_iterations
        return adversarial


def eot(attack: Attack, k: int = 4) -> EOT:
    """Wrap a white-box attack with EOT over k draws."""
    return EOT(attack, k)
