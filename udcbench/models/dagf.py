"""DAGF: Deep Atrous Guided Filter (Sundar et al., "Deep Atrous Guided Filter for Image Restoration in Under
Display Cameras", ECCV 2020 workshops).

Written from the paper: a two-stage network. The image x (values in [-1, 1]) is bilinearly halved; a
low-resolution network (LRNet) restores that half-size image after a further 2× space-to-depth
(pixel-unshuffle, so it runs on 12 channels at a quarter of the side) and depth-to-space back. LRNet is a
GCANet-like stack: a 3×3 stem, three groups of four "smooth dilated" residual atrous blocks (dilation bases
1, 2, 4; each block runs four parallel 3×3 convolutions at dilations d, 2d, 4d, 8d, each preceded by a
shared-weight separable smoothing kernel of side 2·dilation−1 that fights gridding, then fuses them, adds the
input, and applies channel and pixel attention), a residual channel/pixel-attention block, a learned 4-way
gate mixing the outputs of the stem and the three groups, and a small head. Normalisation everywhere is an
adaptive instance norm, w0·x + w1·IN(x). A guided filter with a learned box filter then transfers the
low-resolution result to full resolution: an atrous guided map (the same parallel-dilation block, without
attention, 3 → 3 channels) is computed on the half-size and on the full-size image; the local linear
coefficients A (from a 1×1 conv net on covariance and variance) and b are bilinearly upsampled and applied to
the full-size guide. The output goes through tanh, so it lies in [-1, 1].

Constructor (release defaults): DAGF(pixelshuffle_ratio=2, guided_map_channels=16, lr_channels=48, radius=1).
The release config also sets guided_map_kernel_size 3, which the released DAGF does not use (its guided map is
the atrous block). Shapes: (B, 3, H, W) -> (B, 3, H, W), H and W multiples of 2·pixelshuffle_ratio (4); the
wrapper pads to that. Module names follow the official release (`guided_map`, `lr`, `gf`), so its
checkpoints (`{'state_dict': ..., 'optimizer': ..., 'epoch': ...}` with a `module.` prefix) load with
strict=True.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract, register_configs


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class AdaptiveInstanceNorm(nn.Module):
    """w_0·x + w_1·InstanceNorm(x), starting as the identity (w_0 = 1, w_1 = 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.w_0 = nn.Parameter(torch.ones(1))
        self.w_1 = nn.Parameter(torch.zeros(1))
        self.ins_norm = nn.InstanceNorm2d(channels, eps=1e-3, momentum=0.999, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_0 * x + self.w_1 * self.ins_norm(x)


class ShareSepConv(nn.Module):
    """One k×k kernel shared by every channel (depthwise), initialised to a centred delta."""

    def __init__(self, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ShareSepConv needs an odd kernel, got {kernel_size}")
        delta = torch.zeros(1, 1, kernel_size, kernel_size)
        delta[..., kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, k = x.shape[1], self.weight.shape[-1]
        return F.conv2d(x, self.weight.expand(channels, 1, k, k), padding=k // 2, groups=channels)


class PALayer(nn.Module):
    """Pixel attention: a per-pixel sigmoid weight from a two-layer 1×1 conv bottleneck (ratio 8)."""

    def __init__(self, channels: int):
        super().__init__()
        self.pa = nn.Sequential(nn.Conv2d(channels, channels // 8, 1), nn.LeakyReLU(0.2, inplace=True),
                                nn.Conv2d(channels // 8, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pa(x)


class CALayer(nn.Module):
    """Channel attention: global average pool, two-layer 1×1 bottleneck (ratio 8), sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.ca = nn.Sequential(nn.Conv2d(channels, channels // 8, 1), nn.LeakyReLU(0.2, inplace=True),
                                nn.Conv2d(channels // 8, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.ca(x.mean(dim=(2, 3), keepdim=True))


class AtrousBlock(nn.Module):
    """Four parallel branches (smoothing kernel → 3×3 conv at dilation d·{1,2,4,8} → norm → LeakyReLU) to
    `channels // 2` maps each, fused by a 3×3 conv back to `in_channels`, normalised and added to the input.

    With attention (the LRNet blocks) channel then pixel attention follow and the input is added once more;
    without it (the guided map, 3 → 3 channels) the block ends after the first residual.
    """

    SCALES = (1, 2, 4, 8)

    def __init__(self, in_channels: int, channels: int, dilation: int = 1, attention: bool = True):
        super().__init__()
        half = channels // 2
        for s in self.SCALES:
            d = s * dilation
            setattr(self, f"pre_conv{s}", ShareSepConv(2 * d - 1))
            setattr(self, f"conv{s}", nn.Conv2d(in_channels, half, 3, padding=d, dilation=d, bias=False))
            setattr(self, f"norm{s}", AdaptiveInstanceNorm(half))
        self.conv = nn.Conv2d(4 * half, in_channels, 3, padding=1, bias=False)
        self.norm = AdaptiveInstanceNorm(in_channels)
        self.attention = attention
        if attention:
            self.calayer = CALayer(in_channels)
            self.palayer = PALayer(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = []
        for s in self.SCALES:
            y = getattr(self, f"conv{s}")(getattr(self, f"pre_conv{s}")(x))
            branches.append(lrelu(getattr(self, f"norm{s}")(y)))
        y = self.norm(self.conv(torch.cat(branches, dim=1))) + x
        if self.attention:
            y = self.palayer(self.calayer(y)) + x
        return lrelu(y)


class ResidualFFABlock(nn.Module):
    """Two 3×3 conv + norm layers with an inner residual, then channel and pixel attention and the skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = AdaptiveInstanceNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = AdaptiveInstanceNorm(channels)
        self.calayer = CALayer(channels)
        self.palayer = PALayer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = lrelu(self.norm1(self.conv1(x))) + x
        y = self.palayer(self.calayer(self.norm2(self.conv2(y))))
        return lrelu(y + x)


class LRNet(nn.Module):
    """The low-resolution restoration network on pixel-unshuffled input (in_c = out_c = 3·ratio²)."""

    GROUPS = ((1, 1), (2, 2), (3, 4))  # (name index, dilation base) of the three groups of four blocks

    def __init__(self, in_c: int = 12, out_c: int = 12, channels: int = 48):
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, channels, 3, padding=1, bias=False)
        self.norm1 = AdaptiveInstanceNorm(channels)
        for index, dilation in self.GROUPS:
            for letter in "abcd":
                setattr(self, f"res{index}_{letter}", AtrousBlock(channels, channels, dilation, attention=True))
        self.res_final = ResidualFFABlock(channels)
        self.gate = nn.Conv2d(4 * channels, 4, 3, padding=1, bias=True)
        self.deconv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm5 = AdaptiveInstanceNorm(channels)
        self.deconv1 = nn.Conv2d(channels, out_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = lrelu(self.norm1(self.conv1(x)))
        taps = [y]
        for index, _ in self.GROUPS:
            for letter in "abcd":
                y = getattr(self, f"res{index}_{letter}")(y)
            if index == 3:
                y = self.res_final(y)
            taps.append(y)
        gates = self.gate(torch.cat(taps, dim=1))
        mixed = sum(tap * gates[:, i:i + 1] for i, tap in enumerate(taps))
        y = lrelu(self.norm5(self.deconv2(mixed)))
        return lrelu(self.deconv1(y))


class ConvGuidedFilter(nn.Module):
    """Trainable guided filter (Wu et al., CVPR 2018): a learnable depthwise 3×3 box filter (dilation = radius,
    initialised to ones and normalised by its response to a constant image) gives local means, variance and
    covariance at low resolution; a 1×1 conv net maps (cov, var) to A, b = mean_y − A·mean_x; A and b are
    bilinearly upsampled (align_corners=True) and applied to the full-resolution guide."""

    def __init__(self, radius: int = 1):
        super().__init__()
        self.box_filter = nn.Conv2d(3, 3, 3, padding=radius, dilation=radius, bias=False, groups=3)
        nn.init.ones_(self.box_filter.weight)
        self.conv_a = nn.Sequential(
            nn.Conv2d(6, 32, 1, bias=False), AdaptiveInstanceNorm(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 1, bias=False), AdaptiveInstanceNorm(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 3, 1, bias=False))

    def forward(self, x_lr: torch.Tensor, y_lr: torch.Tensor, x_hr: torch.Tensor) -> torch.Tensor:
        h, w = x_lr.shape[-2:]
        count = self.box_filter(x_lr.new_ones(1, 3, h, w))
        mean_x = self.box_filter(x_lr) / count
        mean_y = self.box_filter(y_lr) / count
        cov_xy = self.box_filter(x_lr * y_lr) / count - mean_x * mean_y
        var_x = self.box_filter(x_lr * x_lr) / count - mean_x * mean_x
        a = self.conv_a(torch.cat([cov_xy, var_x], dim=1))
        b = mean_y - a * mean_x
        size = x_hr.shape[-2:]
        a = F.interpolate(a, size, mode="bilinear", align_corners=True)
        b = F.interpolate(b, size, mode="bilinear", align_corners=True)
        return a * x_hr + b


class DAGF(nn.Module):
    """Deep Atrous Guided Filter: forward(x) with x in [-1, 1], (B, 3, H, W), H and W multiples of
    2·pixelshuffle_ratio; the half-resolution input is computed inside. Returns tanh output in [-1, 1]."""

    def __init__(self, pixelshuffle_ratio: int = 2, guided_map_channels: int = 16, lr_channels: int = 48,
                 radius: int = 1):
        super().__init__()
        self.ratio = pixelshuffle_ratio
        self.guided_map = AtrousBlock(3, guided_map_channels, dilation=1, attention=False)
        depth = 3 * pixelshuffle_ratio ** 2
        self.lr = LRNet(depth, depth, lr_channels)
        self.gf = ConvGuidedFilter(radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        multiple = 2 * self.ratio
        if h % multiple or w % multiple:
            raise ValueError(f"DAGF needs H and W to be multiples of {multiple}, got {h}×{w}")
        x_lr = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=True)
        y_lr = F.pixel_shuffle(self.lr(F.pixel_unshuffle(x_lr, self.ratio)), self.ratio)
        return torch.tanh(self.gf(self.guided_map(x_lr), y_lr, self.guided_map(x)))


CONFIGS = {
    "dagf": dict(pixelshuffle_ratio=2, guided_map_channels=16),
}

CONTRACT = InputContract(value_range=(-1.0, 1.0), tone_mapping=None, pad_multiple=4, pad_mode="reflect",
                         note="inputs (x-0.5)*2, tanh output; H, W multiples of 4 (halving, then 2× "
                              "pixel-unshuffle); the official scripts run full 1024×2048 frames unpadded")

PAPER = ("Sundar et al., Deep Atrous Guided Filter for Image Restoration in Under Display Cameras, "
         "ECCV 2020 workshops")


BLOCKS = (AtrousBlock, ResidualFFABlock)  # checkpointed one by one under --memory low (udcbench.models.memory)

register_configs("dagf", CONFIGS, DAGF, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="{'state_dict': ..., 'optimizer', 'epoch', 'global_step', 'loss'} "
                                   "from DataParallel ('module.' prefix)")
