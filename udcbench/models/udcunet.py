"""UDC-UNet: under-display camera restoration with a U-shaped dynamic network (Liu et al., ECCV 2022 workshops;
winner of the MIPI 2022 UDC challenge).

Written from the paper. Three branches see the degraded HDR image:
- a *condition* branch (3×3 conv, two plain residual blocks, then four small heads, one per U-Net level, that
  stride down to 1/1, 1/2, 1/4, 1/8 resolution) produces spatial feature-transform (SFT) maps;
- a *kernel* branch sees the image concatenated with the PSF code broadcast over the image and predicts, per
  pixel and channel, a K×K filter for every level;
- the *base* U-Net: 3×3 conv, three encoder stages of SFT residual blocks with strided 3×3 convs down, a bottom
  stage, and three decoder stages with conv + pixel-shuffle up. Every SFT residual block modulates its input
  with the level's condition (x·(scale+1)+shift) before each of its two convs. The skips are not copied: each
  encoder feature passes through its per-pixel dynamic K×K filter (replicate padding) before being added to
  the upsampled decoder feature (and at the bottom, the dynamic-filtered input of the bottom stage is added to
  its output).
The output is relu(x + conv_last(...)): a residual on the linear HDR input, kept non-negative.

The MIPI release trains one network for one display, so the 5-d PSF code is a fixed constant built in forward
(it is not in the state dict). Module names and shapes follow the official release so its BasicSR checkpoints
(`{'params_ema': ...}`) load with strict=True. Inputs are linear HDR values in [0, 500]; sides must be
multiples of 8 (three stride-2 levels), which the model wrapper (`udcbench.models.base`) pads to.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import TONE_MAP, InputContract, register_configs

PSF_CODE = (-0.0020, 0.0352, -2.0215e-05, 0.0060, 9.4328e-05)  # the official fixed kernel code of the display
SFT_HIDDEN = 32  # the SFT layers' hidden width is 32 at every level in the release


def lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def scale_init(*convs: nn.Conv2d, scale: float = 0.1) -> None:
    """Kaiming-normal weights scaled down (residual branches start near identity), zero biases."""
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
        conv.weight.data.mul_(scale)
        nn.init.zeros_(conv.bias)


class ResidualBlockNoBN(nn.Module):
    """x + conv(lrelu(conv(x))), 3×3 convs, no normalisation."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        scale_init(self.conv1, self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.2))


class SFTLayer(nn.Module):
    """Spatial feature transform: feature·(1 + scale(cond)) + shift(cond), each a 1×1 conv → lrelu → 1×1 conv."""

    def __init__(self, in_nc: int, out_nc: int, nf: int = SFT_HIDDEN):
        super().__init__()
        self.SFT_scale_conv0 = nn.Conv2d(in_nc, nf, 1)
        self.SFT_scale_conv1 = nn.Conv2d(nf, out_nc, 1)
        self.SFT_shift_conv0 = nn.Conv2d(in_nc, nf, 1)
        self.SFT_shift_conv1 = nn.Conv2d(nf, out_nc, 1)

    def forward(self, fea: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(cond), 0.2))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(cond), 0.2))
        return fea * (scale + 1) + shift


class ResBlockSFT(nn.Module):
    """x + conv2(SFT2(lrelu(conv1(SFT1(x, c))), c)) — official name ResBlock_with_SFT."""

    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.sft1 = SFTLayer(nf, nf)
        self.sft2 = SFTLayer(nf, nf)
        scale_init(self.conv1, self.conv2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        fea = F.leaky_relu(self.conv1(self.sft1(x, cond)), 0.2)
        return x + self.conv2(self.sft2(fea, cond))


class SFTStage(nn.Sequential):
    """A chain of SFT residual blocks sharing one condition map (keys `<stage>.<i>.…` as in the release)."""

    def __init__(self, nf: int, depth: int):
        super().__init__(*[ResBlockSFT(nf) for _ in range(depth)])

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, cond)
        return x


def level_head(nf: int, level: int, out_ch: int) -> nn.Sequential:
    """Per-level head of the condition/kernel branches: three convs with lrelu (the first `level` of them strided
    3×3, the rest 1×1), then a 1×1 conv to out_ch channels; the output is at 1/2**level resolution."""
    layers: list[nn.Module] = []
    for i in range(3):
        layers += [nn.Conv2d(nf, nf, 3, 2, 1) if i < level else nn.Conv2d(nf, nf, 1), lrelu()]
    layers.append(nn.Conv2d(nf, out_ch, 1))
    return nn.Sequential(*layers)


def dynamic_filter(feat: torch.Tensor, kernel: torch.Tensor, ksize: int) -> torch.Tensor:
    """Per-pixel, per-channel K×K filtering with replicate padding.

    feat (B, C, H, W); kernel (B, C·K·K, H, W), channel c·K² + i·K + j weighting the neighbour at row offset
    i − K//2 and column offset j − K//2.
    """
    b, c, h, w = feat.shape
    pad = (ksize - 1) // 2
    patches = F.unfold(F.pad(feat, (pad, pad, pad, pad), mode="replicate"), ksize)  # B, C·K², H·W
    patches = patches.view(b, c, ksize * ksize, h, w)
    return (patches * kernel.view(b, c, ksize * ksize, h, w)).sum(dim=2)


class UDCUNet(nn.Module):
    """UDC-UNet with the official constructor's structure.

    Args: in_nc 3, out_nc 3, nf 32, depths (2, 2, 2, 8, 2, 2, 2) (three encoder stages, bottom, three decoder
    stages), DyK_size 3 (side of the dynamic filters).
    Shapes: (B, 3, H, W) linear HDR -> (B, 3, H, W) linear HDR ≥ 0, H and W multiples of 8.
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 32, depths=(2, 2, 2, 8, 2, 2, 2),
                 DyK_size: int = 3):
        super().__init__()
        self.DyK_size = DyK_size
        k2 = DyK_size * DyK_size

        # condition branch
        self.cond_head = nn.Sequential(nn.Conv2d(in_nc, nf, 3, 1, 1), lrelu())
        self.cond_first = nn.Sequential(ResidualBlockNoBN(nf), ResidualBlockNoBN(nf))
        for level in range(4):
            setattr(self, f"CondNet{level}", level_head(nf, level, nf * 2 ** level))

        # kernel branch (image + broadcast PSF code)
        self.k_head = nn.Sequential(nn.Conv2d(in_nc + len(PSF_CODE), nf, 3, 1, 1), lrelu())
        self.k_first = nn.Sequential(ResidualBlockNoBN(nf), ResidualBlockNoBN(nf))
        for level in range(4):
            setattr(self, f"KNet{level}", level_head(nf, level, nf * 2 ** level * k2))

        # base U-Net
        self.conv_first = nn.Sequential(nn.Conv2d(in_nc, nf, 3, 1, 1), lrelu())
        for level in range(3):
            width = nf * 2 ** level
            setattr(self, f"enconv_layer{level}", SFTStage(width, depths[level]))
            setattr(self, f"down_conv{level}", nn.Conv2d(width, 2 * width, 3, 2, 1))
        self.Bottom_conv = SFTStage(nf * 8, depths[3])
        for level in (2, 1, 0):
            width = nf * 2 ** level
            setattr(self, f"up_conv{level}", nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, 1, 1),
                                                           nn.PixelShuffle(2)))
            setattr(self, f"deconv_layer{level}", SFTStage(width, depths[6 - level]))
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def psf_code(self, x: torch.Tensor) -> torch.Tensor:
        code = torch.tensor(PSF_CODE, dtype=torch.float32, device=x.device).to(x.dtype)
        return code.view(1, -1, 1, 1).expand(x.shape[0], -1, x.shape[2], x.shape[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.DyK_size
        k_fea = self.k_first(self.k_head(torch.cat([x, self.psf_code(x)], dim=1)))
        kernels = [getattr(self, f"KNet{level}")(k_fea) for level in range(4)]
        c_fea = self.cond_first(self.cond_head(x))
        conds = [getattr(self, f"CondNet{level}")(c_fea) for level in range(4)]

        fea = self.conv_first(x)
        skips = []
        for level in range(3):
            fea = getattr(self, f"enconv_layer{level}")(fea, conds[level])
            skips.append(fea)
            fea = getattr(self, f"down_conv{level}")(fea)
        fea = self.Bottom_conv(fea, conds[3]) + dynamic_filter(fea, kernels[3], k)
        for level in (2, 1, 0):
            fea = getattr(self, f"up_conv{level}")(fea) + dynamic_filter(skips[level], kernels[level], k)
            fea = getattr(self, f"deconv_layer{level}")(fea, conds[level])
        return F.relu(x + self.conv_last(fea))


CONFIGS = {"udcunet": dict(nf=32, depths=(2, 2, 2, 8, 2, 2, 2), DyK_size=3)}

CONTRACT = InputContract(value_range=(0.0, 500.0), tone_mapping=TONE_MAP, pad_multiple=8, pad_mode="reflect",
                         note="linear HDR in [0,500] (MIPI .npy data, no tone mapping before the net); sides "
                              "multiples of 8 (three stride-2 levels); PSF code fixed inside the net")

PAPER = ("Liu et al., UDC-UNet: Under-Display Camera Image Restoration via U-Shape Dynamic Network, "
         "ECCV 2022 workshops (MIPI)")


# checkpointed one by one under --memory low (udcbench.models.memory): the residual blocks and the per-level
# condition and kernel heads (only their outputs, which the U-Net needs later, are kept)
BLOCKS = (ResBlockSFT, ResidualBlockNoBN, "KNet*", "CondNet*")

register_configs("udcunet", CONFIGS, UDCUNet, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="BasicSR {'params_ema': ...} (also 'params')")
