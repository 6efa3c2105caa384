"""Restormer: an efficient transformer for high-resolution image restoration (Zamir et al., CVPR 2022).

Written from the paper: a four-level U-Net built from transformer blocks that never attend over pixels. Each
block is a per-pixel LayerNorm followed by MDTA (multi-Dconv head transposed attention: queries, keys and values
from a 1×1 conv then a depthwise 3×3 conv; attention is computed across *channels*, a C/heads × C/heads map per
head from L2-normalised queries and keys scaled by a learned per-head temperature, so the cost is linear in the
number of pixels), then a second LayerNorm and GDFN (gated depthwise-conv feed-forward: 1×1 expansion to two
branches, depthwise 3×3, GELU of one branch times the other, 1×1 back). Both sub-layers are residual.
Downsampling is a 3×3 conv halving the channels then pixel-unshuffle; upsampling a 3×3 conv doubling them then
pixel-shuffle. Decoder levels 3 and 2 concatenate the encoder skip and reduce channels with a 1×1 conv; level 1
keeps the concatenation (2·dim channels), followed by refinement blocks, a 3×3 output conv and a global residual
on the input image. Module names and tensor shapes follow the official release (swz30/Restormer) so its
checkpoints load with strict=True.

Three 2× downsamplings mean H and W must be multiples of 8; the official test scripts reflect-pad to that and
crop, which the model wrapper (`udcbench.models.base`) reproduces.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract, register_configs


class _WithBiasNorm(nn.Module):
    """LayerNorm over channels with a scale and shift (official key names: weight, bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H·W, C)
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-5)


class _BiasFreeNorm(nn.Module):
    """Scale-only normalisation: divides by the standard deviation without removing the mean."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.var(-1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(variance + 1e-5) * self.weight


class LayerNorm(nn.Module):
    """Per-pixel channel normalisation of a (B, C, H, W) map; the norm itself lives in `body`."""

    def __init__(self, dim: int, kind: str = "WithBias"):
        super().__init__()
        self.body = _BiasFreeNorm(dim) if kind == "BiasFree" else _WithBiasNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.body(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class FeedForward(nn.Module):
    """GDFN: 1×1 conv to 2·hidden, depthwise 3×3, GELU(first half) · second half, 1×1 conv back."""

    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class Attention(nn.Module):
    """MDTA: transposed (channel × channel) self-attention per head with a learned temperature."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, 3, padding=1, groups=3 * dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        per_head = (b, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (t.reshape(per_head) for t in self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, heads, C/heads, C/heads)
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    """x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool, norm: str):
        super().__init__()
        self.norm1 = LayerNorm(dim, norm)
        self.attn = Attention(dim, heads, bias)
        self.norm2 = LayerNorm(dim, norm)
        self.ffn = FeedForward(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    """A 3×3 conv from image to features (no bias in the release)."""

    def __init__(self, cin: int = 3, dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """3×3 conv to C/2 channels, pixel-unshuffle by 2: (B, C, H, W) -> (B, 2C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """3×3 conv to 2C channels, pixel-shuffle by 2: (B, C, H, W) -> (B, C/2, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Restormer(nn.Module):
    """Restormer with the official constructor's structure.

    Args: inp_channels 3, out_channels 3, dim 48, num_blocks (4, 6, 6, 8), num_refinement_blocks 4,
    heads (1, 2, 4, 8), ffn_expansion_factor 2.66, bias False, LayerNorm_type "WithBias" (or "BiasFree"),
    dual_pixel_task False (True adds a 1×1 skip conv and drops the image residual, for 6-channel dual-pixel input).
    Shapes: (B, inp_channels, H, W) -> (B, out_channels, H, W), H and W multiples of 8.
    """

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48, num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks: int = 4, heads=(1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
                 bias: bool = False, LayerNorm_type: str = "WithBias", dual_pixel_task: bool = False):
        super().__init__()

        def stack(channels: int, count: int, n_heads: int) -> nn.Sequential:
            return nn.Sequential(*[TransformerBlock(channels, n_heads, ffn_expansion_factor, bias, LayerNorm_type)
                                   for _ in range(count)])

        d1, d2, d3, d4 = dim, 2 * dim, 4 * dim, 8 * dim
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = stack(d1, num_blocks[0], heads[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = stack(d2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = stack(d3, num_blocks[2], heads[2])
        self.down3_4 = Downsample(d3)
        self.latent = stack(d4, num_blocks[3], heads[3])
        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, 1, bias=bias)
        self.decoder_level3 = stack(d3, num_blocks[2], heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, 1, bias=bias)
        self.decoder_level2 = stack(d2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(d2)  # level 1 keeps the 2·dim concatenation, no channel reduction
        self.decoder_level1 = stack(d2, num_blocks[0], heads[0])
        self.refinement = stack(d2, num_refinement_blocks, heads[0])
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, 1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, 3, padding=1, bias=bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        embedded = self.patch_embed(image)
        enc1 = self.encoder_level1(embedded)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        y = self.latent(self.down3_4(enc3))
        y = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(y), enc3], dim=1)))
        y = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(y), enc2], dim=1)))
        y = self.refinement(self.decoder_level1(torch.cat([self.up2_1(y), enc1], dim=1)))
        if self.dual_pixel_task:
            return self.output(y + self.skip_conv(embedded))
        return self.output(y) + image


CONFIGS = {
    "restormer": dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4, heads=(1, 2, 4, 8),
                      ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias"),
}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=8, square=False, pad_mode="reflect",
                         note="H, W multiples of 8 (official test scripts reflect-pad and crop)")

PAPER = "Zamir et al., Restormer: Efficient Transformer for High-Resolution Image Restoration, CVPR 2022"


BLOCKS = (TransformerBlock,)  # checkpointed one by one under --memory low (udcbench.models.memory)

register_configs("restormer", CONFIGS, Restormer, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="{'params': ...} (BasicSR)")
