"""What an attack maximises. An objective is a value handed to the attack, not a string inside its loop.

`reference(clean_output, gt)` computes what the output is compared with, once per image, from the clean
output f(y) that the runner computes anyway (for the default: f(y) quantised to 8 bits, as in Yu et al.,
CVPR 2022); `__call__(output, reference)`
returns one differentiable value per image, shape (B,), that the attack drives up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from udcbench.errors import SpecError


@dataclass(frozen=True)
class Objective:
    """`targeted` objectives pull the output toward a target (their value is −distance, so it still rises);
    `uses_clean_output` says the reference is computed from the clean output (a transfer attack recomputes it
    on its surrogate)."""

    name: str = "base"
    targeted = False
    uses_clean_output = False

    def reference(self, clean_output: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class MSEToClean(Objective):
    """Mean squared deviation of f(y + δ) from the quantised clean output round(255·f(y))/255 (the default)."""

    name: str = "mse-clean"
    quantise: bool = True
    uses_clean_output = True

    def reference(self, clean_output, gt):
        clean = clean_output.detach()
        return torch.round(clean * 255.0) / 255.0 if self.quantise else clean

    def __call__(self, output, reference):
        return (output - reference).pow(2).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class MSEToGroundTruth(Objective):
    """Mean squared error of f(y + δ) against the ground truth."""

    name: str = "mse-gt"

    def reference(self, clean_output, gt):
        return gt

    def __call__(self, output, reference):
        return (output - reference).pow(2).flatten(1).mean(dim=1)


OBJECTIVES = {"mse-clean": MSEToClean, "mse-gt": MSEToGroundTruth}


def make_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise SpecError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]()
