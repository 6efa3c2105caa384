"""The model wrapper: applies a network's input contract so attacks and metrics always see [0,1] images of
the original size, with gradients flowing through padding, scaling and cropping."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.data.tonemap import TONE_MAP, inverse_tone_map, tone_map
from udcbench.errors import SpecError
from udcbench.registry import register_model


@dataclass(frozen=True)
class InputContract:
    """What a network expects, so the wrapper can translate from the [0,1] images users and attacks see.

    value_range: the range of the network's inputs/outputs; [0,1] images are mapped linearly onto it
        (e.g. (-1, 1) for a tanh network).
    tone_mapping: None, or "x/(x+0.25)": the [0,1] images are tone-mapped HDR and the network works on linear
        HDR values (the wrapper applies x = 0.25·u/(1−u), capped at value_range[1], before the network and
        u = x/(x+0.25) after it). value_range is then the linear HDR range, e.g. (0, 500).
    pad_multiple / square / pad_mode: H and W must be multiples of pad_multiple (and equal if square); the
        wrapper pads ('reflect', 'replicate', or 'zeros-centre': zeros around a centred image, as Uformer's
        official test does) and crops the output back.
    extra_inputs: further positional inputs of forward() that each sample must supply (e.g. 'psf_code').
    output_index: for networks returning several outputs, which one is the restored image.
    """

    value_range: tuple[float, float] = (0.0, 1.0)
    pad_multiple: int = 1
    square: bool = False
    pad_mode: str = "reflect"
    extra_inputs: tuple[str, ...] = ()
    tone_mapping: str | None = None
    output_index: int | None = None
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

    def _to_network(self, image: torch.Tensor) -> torch.Tensor:
        lo, hi = self.contract.value_range
        if self.contract.tone_mapping == TONE_MAP:
            return inverse_tone_map(image, cap=tone_map(hi))
        return image * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else image

    def _from_network(self, out: torch.Tensor) -> torch.Tensor:
        lo, hi = self.contract.value_range
        if self.contract.tone_mapping == TONE_MAP:
            return tone_map(out.clamp(min=0.0))
        return (out - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else out

    def forward(self, image: torch.Tensor, clamp: bool = True, **extras: torch.Tensor) -> torch.Tensor:
        """[0,1] image (B, 3, H, W) -> restored [0,1] image of the same size; clamp=False (for training) keeps
        the gradient where the network overshoots the range."""
        contract = self.contract
        missing = [name for name in contract.extra_inputs if name not in extras]
        if missing:
            raise SpecError(f"model {self.info.name} needs {', '.join(missing)} for every image, and the dataset "
                            "supplies none; use a dataset that provides it (see `udcbench list datasets`)")
        height, width = image.shape[-2:]
        x = self._to_network(image)
        target_h, target_w = contract.padded_size(height, width)
        top = left = 0
        if (target_h, target_w) != (height, width):
            pad_h, pad_w = target_h - height, target_w - width
            if contract.pad_mode == "zeros-centre":
                top, left = pad_h // 2, pad_w // 2
                x = F.pad(x, (left, pad_w - left, top, pad_h - top))
            else:
                mode = contract.pad_mode
                if mode == "reflect" and (pad_h >= height or pad_w >= width):
                    mode = "replicate"  # reflection cannot pad more than the image holds
                x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self.net(x, *[extras[name] for name in contract.extra_inputs])
        if contract.output_index is not None:
            out = out[contract.output_index]
        out = out[..., top:top + height, left:left + width]
        out = self._from_network(out)
        return out.clamp(0.0, 1.0) if clamp else out

    def bind(self, **extras: torch.Tensor) -> "RestorationModel | BoundModel":
        """The model with a sample's extra inputs fixed, callable as model(image) by attacks."""
        return BoundModel(self, extras) if extras else self


class BoundModel(nn.Module):
    """A RestorationModel with extra inputs (e.g. a PSF code) fixed for one sample or batch."""

    def __init__(self, model: RestorationModel, extras: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.extras = extras
        self.info = model.info

    @property
    def contract(self) -> InputContract:
        return self.model.contract

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        extras = {k: v.expand(image.shape[0], *v.shape[1:]) if v.shape[0] == 1 else v for k, v in self.extras.items()}
        return self.model(image, **extras)


def register_configs(family: str, configs: Mapping[str, dict], build: Callable[..., nn.Module],
                     per_config: Callable[[str], dict] | None = None, **info: Any) -> None:
    """Register every configuration of a model family: `configs` maps a name to the keyword arguments of
    `build`, and the entry `name` builds `build(**configs[name], **options)` (options: what `load_model`
    resolved from `info["options"]`, none for most models).

    info: what every configuration registers alike (contract=, paper=, blocks=, checkpoint_format=, ...);
    per_config(name): further info of one configuration (e.g. Uformer's options= and checkpoint_hint=).
    """
    for name in configs:
        extra = per_config(name) if per_config is not None else {}
        register_model(name, family=family, **info, **extra)(_config_factory(configs, name, build))


def _config_factory(configs: Mapping[str, dict], name: str, build: Callable[..., nn.Module]) -> Callable:
    """The factory of one configuration (its own function, so each closure holds its own `name`)."""
    def factory(**options: Any) -> nn.Module:
        return build(**configs[name], **options)
    return factory
