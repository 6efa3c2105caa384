"""DWFormer: a depthwise-convolution "transformer" for under-display-camera image restoration.

The DWFormer entry of the MIPI 2022 challenge on UDC image restoration (Feng et al., "MIPI 2022 Challenge on
Under-Display Camera Image Restoration: Methods and Results", ECCV Workshops 2022). It is a three-level U-Net of
MetaFormer-style blocks in which token mixing is done by convolutions instead of attention:

* a block is two residual branches. The "inter" (spatial mixing) branch: BatchNorm → 1×1 conv → depthwise 5×5
  conv (reflect padding) → ReLU → a global-context gate → 1×1 conv. The "intra" (channel MLP) branch:
  BatchNorm → 1×1 conv (C → mlp_ratio·C) → ReLU → 1×1 conv (back to C).
* the global-context gate pools the feature map into one C-vector, passes it through a squeeze-excitation MLP
  (Linear C → C/se_ratio, ReLU, Linear back, sigmoid, no biases) and scales the channels with it. Its pooling
  weights come from a 1×1 conv (C → 1) followed by a softmax, but the official code takes that softmax over a
  singleton axis, so every weight is exactly 1: the pooled vector is the *sum* over all pixels (so the gate
  depends on the image size) and the 1×1 conv gets no gradient. This is reproduced as is, since released
  weights were trained with it.
* encoder: 3×3 conv (3 → emd_dims[0]) then level-1 blocks; a strided 2×2 conv and level-2 blocks; another
  strided 2×2 conv and level-3 blocks. Decoder: 1×1 conv to 4·C' channels + pixel shuffle (×2), concatenation
  with the encoder feature of that level, 3×3 conv (reflect) + ReLU fusing 2·C' → C', then blocks; twice.
  A final 3×3 conv (reflect) maps back to RGB and the input is added (global residual).

Constructor: DWFormer(in_ch=3, emd_dims=(24, 48, 96, 48, 24), mlp_ratios=(2, 4, 4, 2, 2),
layer_num=(8, 8, 8, 6, 6), se_ratio=1); emd_dims[3] must equal emd_dims[1] and emd_dims[4] emd_dims[0]
(the skip concatenations). Input and output (B, in_ch, H, W) with H, W multiples of 4 (two ×2 down-samplings);
the model wrapper reflect-pads to that. The network works on PNG/255 images in [0, 1].

It holds BatchNorm layers (running statistics and num_batches_tracked are state-dict buffers, as in the
official release), so it must be evaluated in eval mode (load_model returns it in eval mode).
Module names and tensor shapes follow the official release so its checkpoints (`{'state_dict': ...}` saved
from DataParallel, keys prefixed `module.`) load with strict=True.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from udcbench.models.base import InputContract, register_configs

INIT_DEPTH = 36  # the official block init always uses this nominal network depth


class GlobalContext(nn.Module):
    """Channel gate from a pooled global descriptor (official name Global_Block; attributes pwconv, mlp)."""

    def __init__(self, dim: int, ratio: int = 1):
        super().__init__()
        self.pwconv = nn.Conv2d(dim, 1, kernel_size=1)
        self.mlp = nn.Sequential(nn.Linear(dim, dim // ratio, bias=False), nn.ReLU(),
                                 nn.Linear(dim // ratio, dim, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Softmax over a length-1 axis, as released: the pooling weights are all exactly 1 (a spatial sum).
        weights = torch.softmax(self.pwconv(x).reshape(b, 1, h * w, 1), dim=-1).reshape(b, 1, h * w)
        pooled = weights @ x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, 1, C)
        gate = self.mlp(pooled.unsqueeze(-2)).permute(0, 3, 1, 2)  # (B, 1, 1, C) -> (B, C, 1, 1)
        return x * gate


class Block(nn.Module):
    """x + inter(x), then x + intra(x); see the module docstring."""

    def __init__(self, dim: int, mlp_ratio: int, se_ratio: int):
        super().__init__()
        self.inter = nn.Sequential(
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, 5, padding=2, groups=dim, padding_mode="reflect"),
            nn.ReLU(inplace=True),
            GlobalContext(dim, se_ratio),
            nn.Conv2d(dim, dim, 1),
        )
        self.intra = nn.Sequential(
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, dim * mlp_ratio, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim * mlp_ratio, dim, 1),
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Truncated normal scaled down with depth (Xavier-like std times (8·depth)^(-1/4)), zero biases.
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
            std = (8 * INIT_DEPTH) ** -0.25 * math.sqrt(2.0 / (fan_in + fan_out))
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.inter(x)
        return x + self.intra(x)


class BasicLayer(nn.Module):
    """A stack of `depth` blocks at one resolution (official attribute `blocks`)."""

    def __init__(self, depth: int, dim: int, mlp_ratio: int, se_ratio: int):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, mlp_ratio, se_ratio) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _up(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(dim_in, 4 * dim_out, 1), nn.PixelShuffle(2))


def _fuse(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1, padding_mode="reflect"), nn.ReLU())


class DWFormer(nn.Module):
    """(B, in_ch, H, W) in [0, 1], H and W multiples of 4 -> restored (B, in_ch, H, W)."""

    def __init__(self, in_ch: int = 3, emd_dims: Sequence[int] = (24, 48, 96, 48, 24),
                 mlp_ratios: Sequence[int] = (2, 4, 4, 2, 2), layer_num: Sequence[int] = (8, 8, 8, 6, 6),
                 se_ratio: int = 1):
        super().__init__()
        d = list(emd_dims)
        if d[3] != d[1] or d[4] != d[0]:
            raise ValueError(f"emd_dims {d}: the decoder widths must mirror the encoder (d[3]=d[1], d[4]=d[0])")
        layer = [BasicLayer(n, dim, r, se_ratio) for n, dim, r in zip(layer_num, d, mlp_ratios)]
        self.downproj1 = nn.Conv2d(in_ch, d[0], 3, padding=1)
        self.block1 = layer[0]
        self.downproj2 = nn.Conv2d(d[0], d[1], 2, stride=2)
        self.block2 = layer[1]
        self.downproj3 = nn.Conv2d(d[1], d[2], 2, stride=2)
        self.block3 = layer[2]
        self.upproj4, self.fuse1, self.block4 = _up(d[2], d[3]), _fuse(d[3]), layer[3]
        self.upproj5, self.fuse2, self.block5 = _up(d[3], d[4]), _fuse(d[4]), layer[4]
        self.out = nn.Conv2d(d[4], in_ch, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip1 = self.block1(self.downproj1(x))
        skip2 = self.block2(self.downproj2(skip1))
        y = self.block3(self.downproj3(skip2))
        y = self.block4(self.fuse1(torch.cat([self.upproj4(y), skip2], dim=1)))
        y = self.block5(self.fuse2(torch.cat([self.upproj5(y), skip1], dim=1)))
        return x + self.out(y)


CONFIGS = {
    "dwformer": dict(emd_dims=(24, 48, 96, 48, 24), mlp_ratios=(2, 4, 4, 2, 2), layer_num=(8, 8, 8, 6, 6),
                     se_ratio=1),
    # Small sibling for CPU training/tests: 255,869 parameters; thin full-resolution levels, depth at 1/4.
    "dwformer-nano": dict(emd_dims=(8, 24, 64, 24, 8), mlp_ratios=(2, 2, 4, 2, 2), layer_num=(1, 2, 4, 2, 1),
                          se_ratio=1),
}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=4, square=False, pad_mode="reflect",
                         note="PNG/255 in [0,1]; H, W multiples of 4 (two ×2 down-samplings); BatchNorm, eval mode")

PAPER = ("DWFormer, MIPI 2022 UDC image restoration challenge entry (Feng et al., MIPI 2022 Challenge on "
         "Under-Display Camera Image Restoration: Methods and Results, ECCV Workshops 2022)")


BLOCKS = (Block,)  # checkpointed one by one under --memory low (udcbench.models.memory)

register_configs("dwformer", CONFIGS, DWFormer, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="{'state_dict': ...} from DataParallel ('module.' prefix)")
