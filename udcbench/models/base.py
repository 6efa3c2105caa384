"""The model wrapper: applies a network's input contract so attacks and metrics always see [0,1] images of
the original size, with gradients flowing through padding, scaling and cropping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class InputContract:
    """What a network expects. value_range: the range its inputs/outputs live in (images in [0,1] are mapped
    linearly onto it); pad_multiple: H and W must be multiples of this; square: H must equal W; pad_mode:
    'reflect' or 'zeros-centre' (zero padding around a centred image, as Uformer's official test does);
    extra_inputs: names of further inputs the dataset must supply (e.g. 'psf_code')."""

    value_range: tuple[float, float] = (0.0, 1.0)
    pad_multiple: int = 1
    square: bool = False
    pad_mode: str = "reflect"
    extra_inputs: tuple[str, ...] = ()
    tone_mapping: str | None = None
    note: str = ""

    def describe(self) -> str:
        parts = [f"range [{self.value_range[0]:g},{self.value_range[1]:g}]"]
        if self.square:
            parts.append(f"square ×{self.pad_multiple} ({self.pad_mode})")
        elif self.pad_multiple > 1:
            parts.append(f"×{self.pad_multiple} ({self.pad_mode})")
        if self.tone_mapping:
            parts.append(f"tone map {self.tone_mapping}")
        parts.extend(f"needs {name}" for name in self.extra_inputs)
        return ", ".join(parts)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        m = self.pad_multiple
        if self.square:
            side = math.ceil(max(height, width) / m) * m
            return side, side
        return math.ceil(height / m) * m, math.ceil(width / m) * m


@dataclass
class ModelInfo:
    name: str
    family: str
    weights: str  # "bundled:<file>", "random", or the checkpoint path
    parameters: int
    contract: InputContract
    resolved_from: str | None = None
    extra: dict = field(default_factory=dict)


class RestorationModel(nn.Module):
    """Wraps a network: pads/crops per the contract, maps [0,1] onto its value range and clamps the output."""

    def __init__(self, net: nn.Module, info: ModelInfo):
        super().__init__()
        self.net = net
        self.info = info

    @property
    def contract(self) -> InputContract:
        return self.info.contract

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        contract = self.contract
        height, width = image.shape[-2:]
        lo, hi = contract.value_range
        x = image * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else image
        target_h, target_w = contract.padded_size(height, width)
        top = left = 0
        if (target_h, target_w) != (height, width):
            if contract.pad_mode == "zeros-centre":
                top, left = (target_h - height) // 2, (target_w - width) // 2
                x = F.pad(x, (left, target_w - width - left, top, target_h - height - top))
            else:
                x = F.pad(x, (0, target_w - width, 0, target_h - height), mode="reflect")
        out = self.net(x)[..., top:top + height, left:left + width]
        if (lo, hi) != (0.0, 1.0):
            out = (out - lo) / (hi - lo)
        return out.clamp(0.0, 1.0)
