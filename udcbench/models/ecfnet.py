"""ECFNet: Enhanced Coarse-to-Fine Network for under-display-camera restoration (Zhu et al., ECCV 2022
workshops; winner of the MIPI 2022 UDC challenge).

Written from the paper: a multi-input multi-output U-Net in the style of MIMO-UNet. The image is also fed in
at 1/2, 1/4 and 1/8 resolution; a shallow convolutional module (SCM) embeds each downscaled copy, and a
feature-attention module (FAM) merges it multiplicatively into the encoder feature of the same scale. Every
encoder and decoder stage is a stack of residual dense blocks (three densely connected 3×3 conv + GELU layers
and a 1×1 local fusion, with a skip). Before decoding, the features of all four encoder scales are resampled
(nearest) to each scale and fused: a plain 1×1 → 3×3 fusion at full resolution, a gated depthwise fusion
(1×1 expansion, depthwise 3×3, mutual sigmoid gating of the two halves, 1×1 projection) at the three coarser
scales. The decoder runs coarse to fine; at 1/8, 1/4 and 1/2 a supervised attention module (SAM) predicts an
image at that scale (residual on the downscaled input) and re-weights the features with it. The outputs are
the four images, coarsest first; the last is the full-resolution restoration (input + predicted residual).

The network works on tone-mapped images x/(x+0.25) directly, i.e. [0,1] in and out (the official test clamps
the last output to [0,1] and inverts the tone map afterwards). Three stride-2 levels and nearest resampling
by factors of 2 need H and W to be multiples of 8; the wrapper reflect-pads to that and crops back.
Module names and tensor shapes follow the official release so its checkpoint loads with strict=True.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract, register_configs


class ConvUnit(nn.Module):
    """Conv (or 4×4 stride-2 transposed conv for upsampling), optionally followed by GELU (official BasicConv)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, act: bool = True,
                 transpose: bool = False):
        super().__init__()
        if transpose:
            conv = nn.ConvTranspose2d(cin, cout, kernel, stride=stride, padding=kernel // 2 - 1)
        else:
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
        self.main = nn.Sequential(conv, nn.GELU()) if act else nn.Sequential(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class DenseLayer(nn.Module):
    """3×3 conv + GELU whose output is appended to its input along channels."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, growth, 3, padding=1), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class ResidualDenseBlock(nn.Module):
    """Three dense layers (growth = width), 1×1 local feature fusion back to width, plus the input."""

    def __init__(self, width: int, layers: int = 3):
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(width * (1 + i), width) for i in range(layers)])
        self.LFF = nn.Conv2d(width * (1 + layers), width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.LFF(self.convs(x))


class Stage(nn.Module):
    """`num_res` residual dense blocks at a fixed width (official EBlock / DBlock)."""

    def __init__(self, width: int, num_res: int):
        super().__init__()
        self.layers = nn.Sequential(*[ResidualDenseBlock(width) for _ in range(num_res)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PlainFusion(nn.Module):
    """Full-resolution cross-scale fusion: concatenation → 1×1 conv + GELU → 3×3 conv (official AFF)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(ConvUnit(cin, cout, 1), ConvUnit(cout, cout, 3, act=False))

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat(features, dim=1))


class GatedFusion(nn.Module):
    """Coarse-scale cross-scale fusion (official AFF1): concatenation → 1×1 expansion to 2·hidden → depthwise
    3×3 → halves a, b gated in turn (a ← σ(a)·b, then b ← σ(b)·a with the new a) → 1×1 projection; no biases."""

    def __init__(self, cin: int, cout: int, expansion: float = 2.0):
        super().__init__()
        wide = 2 * int(cin * expansion)
        self.project_in = nn.Conv2d(cin, wide, 1, bias=False)
        self.dwconv = nn.Conv2d(wide, wide, 3, padding=1, groups=wide, bias=False)
        self.project_out = nn.Conv2d(wide, cout, 1, bias=False)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        a, b = self.dwconv(self.project_in(torch.cat(features, dim=1))).chunk(2, dim=1)
        a = torch.sigmoid(a) * b
        b = torch.sigmoid(b) * a
        return self.project_out(torch.cat([a, b], dim=1))


class ShallowConv(nn.Module):
    """SCM: embeds a downscaled input image into `width` channels (the image itself is kept as 3 of them)."""

    def __init__(self, width: int):
        super().__init__()
        self.main = nn.Sequential(ConvUnit(3, width // 4, 3), ConvUnit(width // 4, width // 2, 1),
                                  ConvUnit(width // 2, width // 2, 3), ConvUnit(width // 2, width - 3, 1))
        self.conv = ConvUnit(width, width, 1, act=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([image, self.main(image)], dim=1))


class FeatureAttention(nn.Module):
    """FAM: encoder feature f plus a 3×3 conv of the product f·s with the SCM embedding s."""

    def __init__(self, width: int):
        super().__init__()
        self.merge = ConvUnit(width, width, 3, act=False)

    def forward(self, feature: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        return feature + self.merge(feature * shallow)


class SupervisedAttention(nn.Module):
    """SAM: predicts an image at this scale (residual on the downscaled input) and gates the features by a
    sigmoid of its re-embedding; returns (features, image)."""

    def __init__(self, width: int, kernel: int = 3):
        super().__init__()
        self.conv1 = ConvUnit(width, width, kernel)
        self.conv2 = ConvUnit(width, 3, kernel, act=False)
        self.conv3 = ConvUnit(3, width, kernel, act=False)

    def forward(self, feature: torch.Tensor, image: torch.Tensor):
        restored = self.conv2(feature) + image
        gated = self.conv1(feature) * torch.sigmoid(self.conv3(restored))
        return gated + feature, restored


def rescale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Nearest resampling by a power of two (the official default F.interpolate mode)."""
    return F.interpolate(x, scale_factor=factor)


class ECFNet(nn.Module):
    """ECFNet with the official constructor's structure (official class name MIMOUNet_complete).

    Args: base_channel 24 (stage widths c, 2c, 4c, 4c at scales 1, 1/2, 1/4, 1/8), num_res 8 (residual dense
    blocks per stage; the release uses 6).
    Shapes: (B, 3, H, W) -> list of 4 images (B, 3, H/8, W/8), (B, 3, H/4, W/4), (B, 3, H/2, W/2),
    (B, 3, H, W); H and W multiples of 8.
    """

    def __init__(self, base_channel: int = 24, num_res: int = 8):
        super().__init__()
        c = base_channel
        widths = (c, 2 * c, 4 * c, 4 * c)  # per scale 1, 1/2, 1/4, 1/8
        self.Encoder = nn.ModuleList([Stage(w, num_res) for w in widths])
        self.feat_extract = nn.ModuleList([
            ConvUnit(3, c, 3),
            ConvUnit(c, 2 * c, 3, stride=2),
            ConvUnit(2 * c, 4 * c, 3, stride=2),
            ConvUnit(4 * c, 4 * c, 3, stride=2),
            ConvUnit(4 * c, 4 * c, 4, stride=2, transpose=True),
            ConvUnit(4 * c, 2 * c, 4, stride=2, transpose=True),
            ConvUnit(2 * c, c, 4, stride=2, transpose=True),
            ConvUnit(c, 3, 3, act=False),
        ])
        self.Decoder = nn.ModuleList([Stage(w, num_res) for w in reversed(widths)])
        self.Convs = nn.ModuleList([ConvUnit(2 * w, w, 1) for w in (4 * c, 2 * c, c)])
        self.ConvsOut = nn.ModuleList([SupervisedAttention(w) for w in (4 * c, 4 * c, 2 * c)])
        fused = sum(widths)  # 11c
        self.AFFs = nn.ModuleList([PlainFusion(fused, c)] + [GatedFusion(fused, w) for w in widths[1:]])
        self.FAM0, self.SCM0 = FeatureAttention(4 * c), ShallowConv(4 * c)  # scale 1/8
        self.FAM1, self.SCM1 = FeatureAttention(4 * c), ShallowConv(4 * c)  # scale 1/4
        self.FAM2, self.SCM2 = FeatureAttention(2 * c), ShallowConv(2 * c)  # scale 1/2

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x2 = rescale(x, 0.5)
        x4 = rescale(x2, 0.5)
        x8 = rescale(x4, 0.5)
        images = (x, x2, x4, x8)
        shallow = (None, self.SCM2(x2), self.SCM1(x4), self.SCM0(x8))
        fams = (None, self.FAM2, self.FAM1, self.FAM0)

        # encoder: feats[s] is the encoder output at scale 1/2**s
        feats = []
        y = self.feat_extract[0](x)
        for s in range(4):
            if s:
                y = fams[s](self.feat_extract[s](y), shallow[s])
            y = self.Encoder[s](y)
            feats.append(y)

        # cross-scale fusion: every scale gathers all four encoder outputs, resampled to it
        def to_scale(source: int, target: int) -> torch.Tensor:
            f = feats[source]
            if source > target:  # upsampling goes one factor of 2 at a time, as in the release
                for _ in range(source - target):
                    f = rescale(f, 2)
                return f
            return f if source == target else rescale(f, 0.5 ** (target - source))

        fused = [self.AFFs[t](*[to_scale(s, t) for s in range(4)]) for t in range(4)]

        # decoder, coarse to fine, with an image predicted at 1/8, 1/4 and 1/2
        outputs = []
        y = fused[3]
        for level in range(3):
            scale = 3 - level
            if level:
                y = self.Convs[level - 1](torch.cat([y, fused[scale]], dim=1))
            y = self.Decoder[level](y)
            y, image = self.ConvsOut[level](y, images[scale])
            outputs.append(image)
            y = self.feat_extract[4 + level](y)
        y = self.Convs[2](torch.cat([y, fused[0]], dim=1))
        y = self.Decoder[3](y)
        outputs.append(self.feat_extract[7](y) + x)
        return outputs


CONFIGS = {"ecfnet": dict(base_channel=24, num_res=6)}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=8, pad_mode="reflect",
                         output_index=-1,
                         note="tone-mapped x/(x+0.25) images as is; ×8 (three stride-2 levels); returns 4 scales, "
                              "the last is full resolution")

PAPER = ("Zhu et al., Enhanced Coarse-to-Fine Network for Image Restoration from Under-Display Cameras, "
         "ECCV 2022 workshops (MIPI)")


# checkpointed one by one under --memory low (udcbench.models.memory): the dense blocks and the cross-scale
# fusions (whose 2·22c-channel interiors would otherwise be kept)
BLOCKS = (ResidualDenseBlock, GatedFusion, PlainFusion)

register_configs("ecfnet", CONFIGS, ECFNet, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="plain state_dict (ckpt/model.pth)")
