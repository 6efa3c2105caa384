"""resconv: a small residual restoration network, this example's own design (no paper).

Architecture: space-to-depth ×2 (pixel unshuffle, (B, 3, H, W) -> (B, 12, H/2, W/2)), a 3×3 conv 12→32, ReLU,
a 3×3 conv 32→12, depth-to-space ×2 (pixel shuffle) back to (B, 3, H, W), added to the input: the network
predicts a correction of the degraded image. Working at half resolution gives the two convolutions a 10×10-px
receptive field for the multiply-adds of a 3→32→3 pair at full resolution (whose field is 5×5). The last conv
starts at zero, so an untrained resconv is the identity.
6,956 parameters (28 KB as float32 safetensors).

How udcbench sees it: the network works on images centred to [-1, 1] and needs even sides (the pixel
unshuffle); both are declared in its input contract (CONTRACT below), and udcbench's wrapper
(udcbench.models.base.RestorationModel) does the mapping, the padding and the cropping, so attacks and metrics
only ever see [0, 1] images of the original size, with gradients flowing through all of it.

Importing this module registers the model; udcbench imports it through the entry point in pyproject.toml.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract
from udcbench.registry import register_model
from udcbench_plugin_example import weights_path


class ResConv(nn.Module):
    """Shapes: (B, 3, H, W) with H and W even, values in [-1, 1] -> (B, 3, H, W) (unclamped)."""

    def __init__(self, channels: int = 3, width: int = 32, scale: int = 2):
        super().__init__()
        packed = channels * scale * scale
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(packed, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, packed, 3, padding=1))
        nn.init.zeros_(self.body[2].weight)
        nn.init.zeros_(self.body[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        correction = self.body(F.pixel_unshuffle(x, self.scale))
        return x + F.pixel_shuffle(correction, self.scale)


# What every field says to udcbench's wrapper (see the README of this example for the whole list):
# - value_range (-1, 1): the wrapper feeds the network 2·u − 1 for a [0, 1] image u and maps its output o back
#   with (o + 1) / 2 before clamping to [0, 1];
# - pad_multiple 2, pad_mode "reflect": odd sides are reflect-padded at the bottom/right to even ones, and the
#   output is cropped back to the input's size;
# - square False, extra_inputs (), tone_mapping None, output_index None: the defaults, stated for the reader.
CONTRACT = InputContract(value_range=(-1.0, 1.0), pad_multiple=2, pad_mode="reflect", square=False,
                         extra_inputs=(), tone_mapping=None, output_index=None,
                         note="centred [-1, 1] values; even sides for the ×2 pixel unshuffle")


# contract= is required (udcbench's wrapper and `udcbench list models` read it); the rest is optional:
# family= groups configurations (`--model FAMILY` picks the one with weights bundled in udcbench itself),
# bundled_weights= (a path, or a function returning one) is the file `--model resconv` loads without --weights,
# paper= is shown by `udcbench list models`, checkpoint_format= documents the file layout, and blocks= names
# the modules that `--memory low` checkpoints (module classes, or fnmatch patterns of module names: here the
# 32-channel body, the largest activation, is recomputed in the backward pass instead of kept).
@register_model("resconv", family="resconv", contract=CONTRACT, blocks=("body",), bundled_weights=weights_path,
                paper="udcbench-plugin-example: 2-conv residual network at half resolution (no paper)",
                checkpoint_format="plain state dict (.safetensors), shipped in the plugin package")
def resconv() -> ResConv:
    """The factory udcbench calls (with no arguments: this model registers no options)."""
    return ResConv()
