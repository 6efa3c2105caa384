"""BNUDC: a two-branched network for under-display-camera restoration (Koh et al., CVPR 2022).

Written from the paper: the degraded image is restored by two branches that each predict per-pixel affine
colour transforms rather than pixels.
  * The high-frequency branch works at full resolution on a 2× space-to-depth rearrangement of the input
    (12 channels): a shallow conv, a smoothed dilated residual block, then three "original resolution blocks"
    (each a stack of dilated residual blocks plus a 3×3 conv, with a residual connection), a tail conv to 24
    channels and a 2× depth-to-space. The 6 channels are a per-pixel gain α and offset β:
    high = α·x + β (channel-wise).
  * The low-frequency branch works on a 4× bilinear downscale, smoothed by a normalised 3×3 box filter (its
    weight is a learnable depthwise conv initialised to ones, divided by the filter response to a ones image
    so borders are averaged correctly), and runs a three-level encoder-decoder of dilated residual blocks
    (bilinear ½ rescale + 1×1 conv down, bilinear 2× + 1×1 conv up with additive skips passed through a
    further residual block). A tail conv gives 12 channels, upsampled 4× (bilinear, align_corners): a
    per-pixel 3×3 colour matrix Γ (9 channels, row-major) and offset δ (3 channels).
  * Outputs: high = α·x + β, low = Γ·x + δ, and the restored image out = Γ·high + δ.

The smoothed dilated residual block (from GCANet) applies, for dilations 1, 2, 4, 8, a learnable shared
separable smoothing kernel (size 2d−1, one kernel shared by all channels, initialised to a centred delta)
followed by a weight-normalised 3×3 dilated conv to feats/2 channels and LeakyReLU(0.2); the four results
are concatenated, fused by a 3×3 conv, added to the input and passed through LeakyReLU(0.2).

Module names and tensor shapes follow the official release so its checkpoints load with strict=True. The
release used the legacy `torch.nn.utils.weight_norm` (keys `weight_g`/`weight_v`); this file uses the
parametrized weight norm (keys `parametrizations.weight.original0/original1`) and `convert_state` maps the
legacy keys. The input side must be a multiple of 16 (2× space-to-depth; 4× downscale then two ½ levels).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from udcbench.models.base import InputContract, register_configs


def conv3(cin: int, cout: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


def space_to_depth(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C·r², H/r, W/r) with channel order c·r² + dy·r + dx (inverse of pixel_shuffle)."""
    return F.pixel_unshuffle(x, r)


def apply_colour_matrix(matrix: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Per-pixel 3×3 matrix times RGB: matrix (B, 9, H, W) row-major, rgb (B, 3, H, W) -> (B, 3, H, W)."""
    b, _, h, w = rgb.shape
    m = matrix.reshape(b, 3, 3, h, w)
    return (m * rgb.unsqueeze(1)).sum(dim=2)


class ShareSepConv(nn.Module):
    """One k×k kernel shared by every channel (depthwise), initialised to the identity (centre tap 1)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel size must be odd")
        self.kernel_size = kernel_size
        kernel = torch.zeros(1, 1, kernel_size, kernel_size)
        kernel[0, 0, kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        kernel = self.weight.expand(channels, 1, self.kernel_size, self.kernel_size)
        return F.conv2d(x, kernel, padding=self.kernel_size // 2, groups=channels)


class SmoothDilatedResidualBlock(nn.Module):
    """Four smoothed, weight-normalised dilated 3×3 convs (d = 1, 2, 4, 8), concatenated, fused, residual."""

    DILATIONS = (1, 2, 4, 8)

    def __init__(self, feats: int):
        super().__init__()
        for d in self.DILATIONS:  # smoothing kernel of size 2d-1 ahead of the conv with dilation d
            setattr(self, f"pre_conv{d}", ShareSepConv(2 * d - 1))
        for d in self.DILATIONS:
            setattr(self, f"conv{d}", weight_norm(nn.Conv2d(feats, feats // 2, 3, padding=d, dilation=d,
                                                            bias=False)))
        self.conv = nn.Conv2d(feats * 2, feats, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [F.leaky_relu(getattr(self, f"conv{d}")(getattr(self, f"pre_conv{d}")(x)), 0.2)
                    for d in self.DILATIONS]
        return F.leaky_relu(self.conv(torch.cat(branches, dim=1)) + x, 0.2)


def blocks(feats: int, count: int) -> nn.Sequential:
    return nn.Sequential(*[SmoothDilatedResidualBlock(feats) for _ in range(count)])


class DownSample(nn.Module):
    """Bilinear ½ rescale, then a 1×1 conv adding `extra` channels."""

    def __init__(self, channels: int, extra: int):
        super().__init__()
        self.down = nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear", align_corners=False),
                                  nn.Conv2d(channels, channels + extra, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class SkipUpSample(nn.Module):
    """Bilinear 2× rescale, a 1×1 conv removing `extra` channels, then add the skip."""

    def __init__(self, channels: int, extra: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                nn.Conv2d(channels + extra, channels, 1, bias=False))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x) + skip


class Encoder(nn.Module):
    """Three levels of two residual blocks; width grows by `step` channels per level."""

    def __init__(self, feats: int, step: int):
        super().__init__()
        self.encoder_level1 = blocks(feats, 2)
        self.encoder_level2 = blocks(feats + step, 2)
        self.encoder_level3 = blocks(feats + 2 * step, 2)
        self.down12 = DownSample(feats, step)
        self.down23 = DownSample(feats + step, step)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e1 = self.encoder_level1(x)
        e2 = self.encoder_level2(self.down12(e1))
        e3 = self.encoder_level3(self.down23(e2))
        return [e1, e2, e3]


class Decoder(nn.Module):
    """Mirror of the encoder; skips pass through a residual block (skip_attn) before being added."""

    def __init__(self, feats: int, step: int):
        super().__init__()
        self.decoder_level1 = blocks(feats, 2)
        self.decoder_level2 = blocks(feats + step, 2)
        self.decoder_level3 = blocks(feats + 2 * step, 2)
        self.skip_attn1 = SmoothDilatedResidualBlock(feats)
        self.skip_attn2 = SmoothDilatedResidualBlock(feats + step)
        self.up21 = SkipUpSample(feats, step)
        self.up32 = SkipUpSample(feats + step, step)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        e1, e2, e3 = features
        d3 = self.decoder_level3(e3)
        d2 = self.decoder_level2(self.up32(d3, self.skip_attn2(e2)))
        return self.decoder_level1(self.up21(d2, self.skip_attn1(e1)))


class OriginalResolutionBlock(nn.Module):
    """`num_blk` residual blocks and a bias-free 3×3 conv, with a skip over the whole stack."""

    def __init__(self, feats: int, num_blk: int):
        super().__init__()
        self.body = nn.Sequential(*[SmoothDilatedResidualBlock(feats) for _ in range(num_blk)],
                                  conv3(feats, feats, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class ORSNet(nn.Module):
    def __init__(self, feats: int, num_blk: int):
        super().__init__()
        self.orb1 = OriginalResolutionBlock(feats, num_blk)
        self.orb2 = OriginalResolutionBlock(feats, num_blk)
        self.orb3 = OriginalResolutionBlock(feats, num_blk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.orb3(self.orb2(self.orb1(x)))


class BNUDC(nn.Module):
    """BNUDC with the official constructor's structure (official class name: BNUDCnet).

    Args: n_feat_high 72 (high-frequency branch width), n_feat_low 32 (low-frequency branch width),
    scale_feats 8 (channels added per encoder level), num_blk 6 (residual blocks per original-resolution
    block), bias True (bias of the head/tail convs).
    Shapes: (B, 3, H, W) -> three (B, 3, H, W) tensors (high, low, out), H and W multiples of 16.
    """

    def __init__(self, n_feat_high: int = 72, n_feat_low: int = 32, scale_feats: int = 8, num_blk: int = 6,
                 bias: bool = True):
        super().__init__()
        self.shallow_feat = nn.Sequential(conv3(12, n_feat_high, bias), SmoothDilatedResidualBlock(n_feat_high))
        self.orsnet = ORSNet(n_feat_high, num_blk)
        self.tail = conv3(n_feat_high, 24, bias)
        self.shallow_sub = nn.Sequential(conv3(3, n_feat_low, bias), SmoothDilatedResidualBlock(n_feat_low))
        self.encoder_sub = Encoder(n_feat_low, scale_feats)
        self.decoder_sub = Decoder(n_feat_low, scale_feats)
        self.tail_sub = conv3(n_feat_low, 12, bias)
        self.box_filter = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        with torch.no_grad():
            self.box_filter.weight.fill_(1.0)

    def high_branch(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shallow_feat(space_to_depth(x, 2))
        y = F.pixel_shuffle(self.tail(self.orsnet(y)), 2)
        gain, offset = y.split(3, dim=1)
        return x * gain + offset

    def low_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        small = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True)
        ones = small.new_ones(1, 3, *small.shape[-2:])
        small = self.box_filter(small) / self.box_filter(ones)
        y = self.decoder_sub(self.encoder_sub(self.shallow_sub(small)))
        y = F.interpolate(self.tail_sub(y), scale_factor=4, mode="bilinear", align_corners=True)
        matrix, offset = y.split(9, dim=1)
        return matrix, offset

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        high = self.high_branch(x)
        matrix, offset = self.low_branch(x)
        low = apply_colour_matrix(matrix, x) + offset
        out = apply_colour_matrix(matrix, high) + offset
        return high, low, out


LEGACY_WEIGHT_NORM = {".weight_g": ".parametrizations.weight.original0",
                      ".weight_v": ".parametrizations.weight.original1"}


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the release's legacy weight-norm keys (`X.weight_g`, `X.weight_v`) onto parametrized ones."""
    converted = {}
    for key, value in state.items():
        for old, new in LEGACY_WEIGHT_NORM.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        converted[key] = value
    return converted


CONFIGS = {"bnudc": dict(n_feat_high=72, n_feat_low=32, scale_feats=8, num_blk=6)}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=16, pad_mode="reflect",
                         output_index=2,
                         note="[0,1] inputs (x/(x+0.25) tone-mapped HDR or PNG/255); side a multiple of 16; "
                              "forward returns (high, low, out), out is used")

PAPER = ("Koh et al., BNUDC: A Two-Branched Deep Neural Network for Restoring Images from Under-Display "
         "Cameras, CVPR 2022")


BLOCKS = (SmoothDilatedResidualBlock,)  # checkpointed one by one under --memory low (udcbench.models.memory)

register_configs("bnudc", CONFIGS, BNUDC, contract=CONTRACT, paper=PAPER, convert_state=convert_state, blocks=BLOCKS,
                 checkpoint_format="plain state_dict from DataParallel ('module.' prefix), legacy weight-norm "
                                   "keys weight_g/weight_v")
