"""DISCNet: dynamic skip connection network for under-display-camera restoration (Feng et al., CVPR 2021).

Written from the paper: two parallel three-level encoders. The restoration encoder turns the degraded image
into features at full, 1/2 and 1/4 resolution (a 3×3 conv, then two residual blocks per level; strided 3×3
convs between levels). The condition encoder has the same shape but reads the image concatenated with the
PSF's 5-d PCA kernel code broadcast over the plane ('img-psf' conditioning); at every level a small head
(conv + PReLU, two residual blocks, 1×1 conv + PReLU) predicts a per-pixel, per-channel kpn_sz×kpn_sz filter.
These filters are applied to the restoration features (the "dynamic skip connections"; only at the
bottleneck when multi_scale is False), and a decoder (sub-pixel upsampling by conv + pixel shuffle, sum with
the filtered skip, two residual blocks) brings them back to full size. A final 3×3 conv (followed, as in the
official release, by a LeakyReLU) predicts a residual added to the input.

The network works on tone-mapped images: the official training and test configurations load the HDR .npy
files and apply x/(x+0.25) ('simple' map) to both input and target before the network, so it maps [0,1]
tone-mapped images to tone-mapped images and needs no tone mapping in the wrapper. Module names and tensor
shapes follow the official release so its BasicSR checkpoints ({'params': ...}) load with strict=True.

Shapes: x (B, in_nc, H, W), psf_code (B, psf_nc, 1, 1) (also accepted: (B, psf_nc) or batch 1 for all)
-> (B, out_nc, H, W). H and W are replicate-padded to a multiple of 4 inside (as the official eval path
does) and the output is cropped back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract, register_configs

SLOPE = 0.2  # negative slope of the LeakyReLUs and initial PReLU slope


def conv_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, act: str | None = "lrelu") -> nn.Sequential:
    """A 'same'-padded conv followed by an activation: LeakyReLU(0.2), PReLU (one slope, init 0.2) or none."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2)]
    if act == "lrelu":
        layers.append(nn.LeakyReLU(SLOPE))
    elif act == "prelu":
        layers.append(nn.PReLU(num_parameters=1, init=SLOPE))
    return nn.Sequential(*layers)


def up_conv(cin: int, cout: int) -> nn.Sequential:
    """×2 sub-pixel upsampling: 3×3 conv to 4·cout channels, pixel shuffle, LeakyReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(SLOPE))


class ResBlock(nn.Module):
    """x + conv2(LeakyReLU(conv1(x))), no normalisation; convs start Kaiming-normal scaled by 0.1."""

    def __init__(self, channels: int, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(SLOPE)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                nn.init.kaiming_normal_(conv.weight)
                conv.weight.mul_(0.1)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(self.act(self.conv1(x)))
        return x + (residual if self.res_scale == 1 else self.res_scale * residual)


def kernel_head(channels: int, kpn_sz: int, res_scale: float) -> nn.Sequential:
    """Predicts channels·kpn_sz² filter taps per pixel (official name: dynamic_kernel*)."""
    return nn.Sequential(conv_act(channels, channels, 3, act="prelu"),
                         ResBlock(channels, res_scale), ResBlock(channels, res_scale),
                         conv_act(channels, channels * kpn_sz ** 2, 1, act="prelu"))


def dynamic_filter(features: torch.Tensor, taps: torch.Tensor, ksize: int) -> torch.Tensor:
    """Per-pixel, per-channel filtering of `features` (B, C, H, W) by `taps` (B, C·k², H, W).

    Tap c·k² + i·k + j weights the neighbour at row offset i − k//2 and column offset j − k//2 of channel c;
    borders are replicate-padded.
    """
    b, c, h, w = features.shape
    half = ksize // 2
    padded = F.pad(features, (half, half, half, half), mode="replicate")
    patches = F.unfold(padded, ksize).view(b, c, ksize * ksize, h, w)
    return (patches * taps.view(b, c, ksize * ksize, h, w)).sum(dim=2)


class DISCNet(nn.Module):
    """DISCNet with the official constructor's arguments.

    Args: in_nc 3, out_nc 3, nf 32 (channels at full resolution; 2·nf and 4·nf below), ns 3 (number of
    scales; recorded only, the net always has three), kpn_sz 5 (dynamic filter size), res_scale 1,
    kernel_cond 'img-psf' ('img', 'psf', 'img-psf' or None: what the condition encoder reads; None drops the
    kernel branch), psf_nc 5 (length of the PSF code), multi_scale True (dynamic filters on all three skips,
    not only at the bottleneck). The release uses nf 32, ns 3, multi_scale True, kernel_cond 'img-psf',
    psf_nc 5, kpn_sz 5 (3.805 M parameters).
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 32, ns: int = 3, kpn_sz: int = 5,
                 res_scale: float = 1.0, kernel_cond: str | None = "img-psf", psf_nc: int = 5,
                 multi_scale: bool = True):
        super().__init__()
        if kernel_cond not in (None, "img", "psf", "img-psf"):
            raise ValueError(f"kernel_cond must be None, 'img', 'psf' or 'img-psf', not {kernel_cond!r}")
        self.ns, self.kpn_sz, self.kernel_cond, self.psf_nc = ns, kpn_sz, kernel_cond, psf_nc
        self.multi_scale = multi_scale
        widths = (nf, 2 * nf, 4 * nf)

        def level(prefix: str, cin: int, cout: int, stride: int) -> None:
            setattr(self, f"{prefix}1", conv_act(cin, cout, 3, stride))
            setattr(self, f"{prefix}2", ResBlock(cout, res_scale))
            setattr(self, f"{prefix}3", ResBlock(cout, res_scale))

        # restoration encoder
        level("conv_1", in_nc, widths[0], 1)
        level("conv_2", widths[0], widths[1], 2)
        level("conv_3", widths[1], widths[2], 2)
        # decoder
        self.upconv_21 = up_conv(widths[2], widths[1])
        self.upconv_22, self.upconv_23 = ResBlock(widths[1], res_scale), ResBlock(widths[1], res_scale)
        self.upconv_11 = up_conv(widths[1], widths[0])
        self.upconv_12, self.upconv_13 = ResBlock(widths[0], res_scale), ResBlock(widths[0], res_scale)
        self.final_conv = conv_act(widths[0], out_nc, 3)

        # condition encoder and filter heads
        if kernel_cond:
            cond_nc = {"img": in_nc, "psf": psf_nc, "img-psf": in_nc + psf_nc}[kernel_cond]
            level("kconv_1", cond_nc, widths[0], 1)
            if multi_scale:
                self.dynamic_kernel1 = kernel_head(widths[0], kpn_sz, res_scale)
            level("kconv_2", widths[0], widths[1], 2)
            if multi_scale:
                self.dynamic_kernel2 = kernel_head(widths[1], kpn_sz, res_scale)
            level("kconv_3", widths[1], widths[2], 2)
            self.dynamic_kernel = kernel_head(widths[2], kpn_sz, res_scale)

    def _run(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2, 3):
            x = getattr(self, f"{prefix}{i}")(x)
        return x

    def _condition(self, x: torch.Tensor, psf_code: torch.Tensor | None) -> torch.Tensor:
        if self.kernel_cond == "img":
            return x
        if psf_code is None:
            raise ValueError(f"DISCNet with kernel_cond={self.kernel_cond!r} needs a PSF code")
        b, _, h, w = x.shape
        code = psf_code.to(x.dtype).reshape(psf_code.shape[0], self.psf_nc, 1, 1)
        code = code.expand(b if code.shape[0] == 1 else code.shape[0], -1, h, w)
        return code if self.kernel_cond == "psf" else torch.cat((code, x), dim=1)

    def forward(self, x: torch.Tensor, psf_code: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 4, -w % 4
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")

        fea1 = self._run("conv_1", x)
        fea2 = self._run("conv_2", fea1)
        fea3 = self._run("conv_3", fea2)
        if self.kernel_cond:
            k1 = self._run("kconv_1", self._condition(x, psf_code))
            k2 = self._run("kconv_2", k1)
            k3 = self._run("kconv_3", k2)
            fea3 = dynamic_filter(fea3, self.dynamic_kernel(k3), self.kpn_sz)
            if self.multi_scale:
                fea2 = dynamic_filter(fea2, self.dynamic_kernel2(k2), self.kpn_sz)
                fea1 = dynamic_filter(fea1, self.dynamic_kernel1(k1), self.kpn_sz)

        up2 = self.upconv_23(self.upconv_22(self.upconv_21(fea3) + fea2))
        up1 = self.upconv_13(self.upconv_12(self.upconv_11(up2) + fea1))
        out = x + self.final_conv(up1)
        return out[..., :h, :w]


CONFIGS = {
    "discnet": dict(in_nc=3, out_nc=3, nf=32, ns=3, multi_scale=True, kernel_cond="img-psf", psf_nc=5, kpn_sz=5),
    "discnet-nano": dict(in_nc=3, out_nc=3, nf=8, ns=3, multi_scale=True, kernel_cond="img-psf", psf_nc=5,
                         kpn_sz=3),
}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=4, pad_mode="replicate",
                         extra_inputs=("psf_code",),
                         note="tone-mapped x/(x+0.25) images in [0,1] (the official data pipeline tone-maps "
                              "before the network); psf_code: the PSF's 5-d PCA kernel code, (B,5,1,1); "
                              "replicate-pad to ×4 as the official eval path does")

PAPER = ("Feng et al., Removing Diffraction Image Artifacts in Under-Display Camera via Dynamic Skip Connection "
         "Network, CVPR 2021")


# checkpointed one by one under --memory low (udcbench.models.memory): the residual blocks and the filter heads.
# The per-pixel filters themselves (C·25 channels, kept for dynamic_filter's backward) stay: they are computed
# outside any module, so DISCNet saves the least of all models (≈ 30 % at 64×64)
BLOCKS = (ResBlock, "dynamic_kernel*")

register_configs("discnet", CONFIGS, DISCNet, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="BasicSR {'params': ...}")
