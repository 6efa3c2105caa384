"""NAFNet: a nonlinear-activation-free network for image restoration (Chen et al., ECCV 2022).

Written from the paper ("Simple Baselines for Image Restoration"): a plain U-Net built from one kind of block.
A NAF block is two residual branches, each scaled by a learned per-channel factor initialised to zero (beta,
gamma). The first branch: channel LayerNorm → 1×1 conv (C→2C) → depthwise 3×3 conv → SimpleGate (split the
channels in half and multiply the halves, replacing a nonlinear activation) → simplified channel attention
(global average pool, 1×1 conv, multiply) → 1×1 conv (C→C). The second branch: LayerNorm → 1×1 conv (C→2C) →
SimpleGate → 1×1 conv (C→C). Encoder stages halve the resolution with a strided 2×2 conv (C→2C); decoder
stages double it with a bias-free 1×1 conv (C→2C) followed by pixel shuffle (→C/2), and add the skip feature.
A 3×3 conv maps the image in and out; the output is a residual added to the input.

The network zero-pads its input on the bottom/right to a multiple of 2**len(enc_blk_nums) and crops the output
back, as the official forward does, so any H×W works and the wrapper needs no padding of its own.
Module names and tensor shapes follow the official release (basicsr NAFNet_arch.py) so its checkpoints
(BasicSR `{'params': ...}`) load with strict=True.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract, register_configs


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (biased variance, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        normed = centred / (centred.pow(2).mean(dim=1, keepdim=True) + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * normed + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """Halve the channels and multiply the two halves: (B, 2C, H, W) -> (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """Two zero-initialised residual branches: spatial mixing with channel attention, then a gated FFN."""

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        dw = c * dw_expand
        ffn = c * ffn_expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))  # simplified attention
        self.sg = SimpleGate()
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sg(self.conv2(self.conv1(self.norm1(x))))
        h = self.conv3(h * self.sca(h))
        y = x + self.dropout1(h) * self.beta
        h = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + self.dropout2(h) * self.gamma


class NAFNet(nn.Module):
    """NAFNet with the official constructor's structure.

    Args: img_channel 3, width 16, middle_blk_num 1, enc_blk_nums (), dec_blk_nums () (the official defaults;
    the SIDD releases use width 32 or 64, enc (2, 2, 4, 8), middle 12, dec (2, 2, 2, 2)).
    Shapes: (B, img_channel, H, W) -> (B, img_channel, H, W), any H and W (padded internally to a multiple of
    2**len(enc_blk_nums) with zeros at the bottom/right, cropped back after).
    """

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1, enc_blk_nums=(),
                 dec_blk_nums=(), drop_out_rate: float = 0.0):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()

        def stage(chan: int, count: int) -> nn.Sequential:
            return nn.Sequential(*[NAFBlock(chan, drop_out_rate=drop_out_rate) for _ in range(count)])

        chan = width
        for count in enc_blk_nums:
            self.encoders.append(stage(chan, count))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = stage(chan, middle_blk_num)
        for count in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(stage(chan, count))
        self.padder_size = 2 ** len(self.encoders)

    def pad_to_multiple(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad bottom/right so H and W are multiples of padder_size (as the official check_image_size)."""
        h, w = x.shape[-2:]
        m = self.padder_size
        return F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.pad_to_multiple(x)
        y = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            y = encoder(y)
            skips.append(y)
            y = down(y)
        y = self.middle_blks(y)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            y = decoder(up(y) + skip)
        out = self.ending(y) + x
        return out[..., :h, :w]


SIDD_BLOCKS = dict(enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2))

CONFIGS = {
    "nafnet-w32": dict(img_channel=3, width=32, **SIDD_BLOCKS),
    "nafnet-w64": dict(img_channel=3, width=64, **SIDD_BLOCKS),
    "nafnet-nano": dict(img_channel=3, width=8, enc_blk_nums=(1, 1, 1, 1), middle_blk_num=1,
                        dec_blk_nums=(1, 1, 1, 1)),
}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=1,
                         note="any size: the network zero-pads to a multiple of 16 itself and crops back")

PAPER = "Chen et al., Simple Baselines for Image Restoration, ECCV 2022"


BLOCKS = (NAFBlock,)  # checkpointed one by one under --memory low (udcbench.models.memory)

register_configs("nafnet", CONFIGS, NAFNet, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="BasicSR {'params': ...}")
