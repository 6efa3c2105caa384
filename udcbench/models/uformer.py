"""Uformer: a general U-shaped transformer for image restoration (Wang et al., CVPR 2022).

Written from the paper: a U-Net whose stages are LeWin blocks (non-overlapping window self-attention with a
learned relative position bias, alternating with shifted windows, followed by a locally-enhanced feed-forward
layer: linear → depthwise 3×3 conv → linear), strided 4×4 convolutions down, 2×2 transposed convolutions up,
skip connections by concatenation, and in the decoder a learnable multi-scale restoration modulator (one
embedding per window position added to the tokens before attention). The output is a residual added to the
input. Module names and tensor shapes follow the official release so its checkpoints load with strict=True.

Tokens are kept as (B, H·W, C) with the spatial size passed alongside. Each stage needs its side to be a
multiple of the window, so the input side must be a multiple of 16·win_size (128 for win_size 8); the model
wrapper (`udcbench.models.base`) pads to that (the official test script zero-pads to a centred square).

The training patch (`train_patch`, the official `img_size`). The official code decides at construction, from
the side of its training crops (`get_arch` builds `Uformer(img_size=opt.train_ps, ...)`), which stages are
"one window": a stage whose side img_size/2^level (level 0-4; the bottleneck is level 4) is at most win_size
gets no shifted windows and a window of that side, at every input size later. With win_size 8:

    train_patch   stages at most one window                       effect
    >= 256        none                                            every second block shifted
    128           bottleneck (side 8)                             bottleneck unshifted
    64            bottleneck (side 4) and level 3 (side 8)        those unshifted; bottleneck window 4

128 and >= 256 give tensors of the same shapes but different outputs (the bottleneck's second block is
shifted or not), so a checkpoint loads under either and only the option says which the authors built;
64 shrinks the bottleneck's relative position tables, so its checkpoints load only under train_patch=64
(udcbench says so when they do not). udcbench's default is 128 for every configuration: the official
options and every official test script default to `--train_ps 128` (the SIDD release was trained at 128;
the GoPro release at 256 but is evaluated by the authors' test script at the default 128); no public
UDC-trained Uformer that fits these configurations states another patch (UDC-SIT's 4-channel Uformer was
trained at 1280, which builds like 256). Set it per run with
`--model uformer-t:train_patch=256` (API: `load_model("uformer-t:train_patch=256", ...)`); the value is
recorded in `model.info.extra["options"]`. The bundled `uformer-nano` was trained on 128-px crops.
"""

from __future__ import annotations

import torch
from torch import nn

from udcbench.models.base import InputContract, register_configs
from udcbench.registry import Option

HEADS = (1, 2, 4, 8, 16, 16, 8, 4, 2)
TRAIN_PATCH = 128  # the official options' `--train_ps` default, used by every official test script
LEVELS = 5  # stage sides are img_size / 2^level, level 0 (full size) to 4 (bottleneck)


def stage_window(resolution: int, win: int, shift: int) -> tuple[int, int]:
    """The official rule: a stage no larger than a window is one window, unshifted -> (window, shift)."""
    return (resolution, 0) if resolution <= win else (win, shift)


def train_patch_problem(img_size: int, win_size: int = 8, modulator: bool = False) -> str | None:
    """Why the official code could not have been trained at `img_size` (None when it could).

    Training crops of that side pass every stage: each side img_size/2^level is whole and either a multiple
    of the window or at most one window (then the window shrinks to it, and must divide win_size so that any
    input padded to 16·win_size tiles into it); with the modulator (win_size² entries, added per window) the
    decoder stages (levels 0-3) must be at least one window wide.
    """
    if img_size < 1:
        return "must be a positive number of pixels"
    sides = [img_size / 2 ** level for level in range(LEVELS)]
    listed = ", ".join(f"{side:g}" for side in sides)
    if img_size % 2 ** (LEVELS - 1):
        return f"gives stage sides {listed}, not all whole (it must be a multiple of {2 ** (LEVELS - 1)})"
    for level, side in enumerate(map(int, sides)):
        if side > win_size and side % win_size:
            return (f"gives stage sides {listed}: {side} is neither a multiple of the {win_size}-px window nor "
                    "at most one window")
        if side <= win_size and win_size % side:
            return f"gives stage sides {listed}: the one-window stage of side {side} does not divide the window"
        if modulator and level < LEVELS - 1 and side < win_size:
            return (f"gives stage sides {listed}: decoder stage {side} px is narrower than the {win_size}-px "
                    f"window its modulator needs ({win_size}×{win_size} positions)")
    return None


def valid_train_patches(win_size: int = 8, modulator: bool = False) -> str:
    """Text listing the accepted patches: the ones below 16·win_size, then 'or a multiple of 16·win_size'."""
    full = 2 ** (LEVELS - 1) * win_size
    small = [p for p in range(1, full) if train_patch_problem(p, win_size, modulator) is None]
    return ", ".join(map(str, small)) + f" or a multiple of {full}" if small else f"a multiple of {full}"


def window_partition(x: torch.Tensor, win: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, win·win, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win * win, c)


def window_merge(windows: torch.Tensor, win: int, h: int, w: int) -> torch.Tensor:
    """(B·nW, win·win, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class LinearProjection(nn.Module):
    """Queries from one linear map, keys and values from a second (official key names to_q / to_kv)."""

    def __init__(self, dim: int, heads: int, bias: bool = True):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=bias)

    def forward(self, x: torch.Tensor):
        b, n, c = x.shape
        q = self.to_q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        kv = self.to_kv(x).view(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a relative position bias table."""

    def __init__(self, dim: int, win: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.win, self.heads = win, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        ys, xs = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()])  # 2, win²
        rel = (coords[:, :, None] - coords[:, None, :]) + (win - 1)  # 2, win², win², in [0, 2win-2]
        self.register_buffer("relative_position_index", rel[0] * (2 * win - 1) + rel[1])
        self.qkv = LinearProjection(dim, heads, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x)
        table, index = self.relative_position_bias_table, self.relative_position_index.view(-1)
        if torch.compiler.is_compiling():  # see models/compiled.py: the same values, laid out for the compiled graph
            # kᵀ and v contiguous: the batched matmuls run ~1.5× faster than on their strided views
            k, v = k.transpose(-2, -1).contiguous(), v.contiguous()
            # the bias by one-hot columns (picks table entries exactly): inductor makes it once per call
            # instead of gathering it again for every window
            bias = table.t() @ (torch.arange(len(table), device=x.device)[:, None] == index).to(table.dtype)
        else:
            k = k.transpose(-2, -1)
            bias = table[index].t()  # heads, n²
        attn = (q * self.scale) @ k
        attn = attn + bias.view(-1, n, n).unsqueeze(0)
        if mask is not None:  # (nW, n, n), added per window
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(b, self.heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: linear, GELU, depthwise 3×3 conv, GELU, linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.linear1(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        x = self.dwconv(x).flatten(2).transpose(1, 2)
        return self.linear2(x)


class LeWinBlock(nn.Module):
    """LayerNorm → (shifted) window attention (+ modulator) → residual; LayerNorm → LeFF → residual."""

    def __init__(self, dim: int, heads: int, win: int, shift: int, mlp_ratio: float, modulator: bool,
                 resolution: int):
        super().__init__()
        # `resolution` is the stage side at the training patch; the official rule applies at construction
        self.win, self.shift = stage_window(resolution, win, shift)
        # sized with the configured window, as in the official code (a decoder stage narrower than a window
        # cannot run there either; `train_patch_problem` refuses such patches)
        self.modulator = nn.Embedding(win * win, dim) if modulator else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.win, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LeFF(dim, int(dim * mlp_ratio))

    def _shift_mask(self, h: int, w: int, device) -> torch.Tensor:
        label = torch.zeros(1, h, w, 1, device=device)
        cuts = (slice(0, -self.win), slice(-self.win, -self.shift), slice(-self.shift, None))
        for i, rows in enumerate(cuts):
            for j, cols in enumerate(cuts):
                label[:, rows, cols, :] = i * 3 + j
        label = window_partition(label, self.win).squeeze(-1)  # nW, win²
        differs = label[:, None, :] != label[:, :, None]
        return differs.float() * -100.0

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        mask = None
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = self._shift_mask(h, w, x.device)
        windows = window_partition(x, self.win)
        if self.modulator is not None:
            windows = windows + self.modulator.weight
        x = window_merge(self.attn(windows, mask), self.win, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(b, n, c)
        return x + self.mlp(self.norm2(x), h, w)


class UformerStage(nn.Module):
    """`depth` LeWin blocks, every second one with windows shifted by win/2 (official name: BasicUformerLayer)."""

    def __init__(self, dim: int, depth: int, heads: int, win: int, mlp_ratio: float, modulator: bool,
                 resolution: int):
        super().__init__()
        self.blocks = nn.ModuleList([LeWinBlock(dim, heads, win, 0 if i % 2 == 0 else win // 2, mlp_ratio,
                                                modulator, resolution) for i in range(depth)])

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, h, w)
        return x


def conv_tokens(layers: nn.Module, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Apply a conv to tokens: (B, H·W, C) -> image -> conv -> tokens."""
    image = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
    return layers(image).flatten(2).transpose(1, 2)


class Downsample(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1))

    def forward(self, x, h, w):
        return conv_tokens(self.conv, x, h, w)


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2))

    def forward(self, x, h, w):
        return conv_tokens(self.deconv, x, h, w)


class InputProj(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(inplace=True))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class OutputProj(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1))

    def forward(self, x, h, w):
        return self.proj(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))


class Uformer(nn.Module):
    """Uformer with the official constructor's structure.

    Args: img_size (the training patch, official default 256 — the registered configurations pass their
    `train_patch` option, 128 unless set; it only decides, as in the official code, which stages are a single
    unshifted window: those whose side img_size/2^level is at most win_size, see the module docstring),
    in_chans 3, embed_dim 32, depths (2,)*9, num_heads (1,2,4,8,16,16,8,4,2), win_size 8, mlp_ratio 4,
    modulator False (True in the released Uformer-T/S/B).
    Shapes: (B, 3, H, W) -> (B, 3, H, W), H and W multiples of 16·win_size.
    Raises ValueError for an img_size the official code could not be trained at (`train_patch_problem`).
    """

    def __init__(self, img_size: int = 256, in_chans: int = 3, embed_dim: int = 32,
                 depths=(2,) * 9, num_heads=HEADS, win_size: int = 8, mlp_ratio: float = 4.0,
                 modulator: bool = False):
        super().__init__()
        problem = train_patch_problem(img_size, win_size, modulator)
        if problem:
            valid = valid_train_patches(win_size, modulator)
            raise ValueError(f"Uformer img_size={img_size} {problem}; use {valid}")
        self.img_size, self.win_size = img_size, win_size
        e = embed_dim

        def stage(dim, i, level, mod=False):
            return UformerStage(dim, depths[i], num_heads[i], win_size, mlp_ratio, mod, img_size // 2 ** level)

        self.input_proj = InputProj(in_chans, e)
        self.output_proj = OutputProj(2 * e, in_chans)
        self.encoderlayer_0, self.dowsample_0 = stage(e, 0, 0), Downsample(e, 2 * e)
        self.encoderlayer_1, self.dowsample_1 = stage(2 * e, 1, 1), Downsample(2 * e, 4 * e)
        self.encoderlayer_2, self.dowsample_2 = stage(4 * e, 2, 2), Downsample(4 * e, 8 * e)
        self.encoderlayer_3, self.dowsample_3 = stage(8 * e, 3, 3), Downsample(8 * e, 16 * e)
        self.conv = stage(16 * e, 4, 4)
        self.upsample_0, self.decoderlayer_0 = Upsample(16 * e, 8 * e), stage(16 * e, 5, 3, modulator)
        self.upsample_1, self.decoderlayer_1 = Upsample(16 * e, 4 * e), stage(8 * e, 6, 2, modulator)
        self.upsample_2, self.decoderlayer_2 = Upsample(8 * e, 2 * e), stage(4 * e, 7, 1, modulator)
        self.upsample_3, self.decoderlayer_3 = Upsample(4 * e, e), stage(2 * e, 8, 0, modulator)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = self.input_proj(x)
        skips = []
        for level in range(4):
            y = getattr(self, f"encoderlayer_{level}")(y, h >> level, w >> level)
            skips.append(y)
            y = getattr(self, f"dowsample_{level}")(y, h >> level, w >> level)
        y = self.conv(y, h >> 4, w >> 4)
        for level in range(4):
            side = 4 - level
            y = getattr(self, f"upsample_{level}")(y, h >> side, w >> side)
            y = torch.cat([y, skips[3 - level]], dim=-1)
            y = getattr(self, f"decoderlayer_{level}")(y, h >> (side - 1), w >> (side - 1))
        return x + self.output_proj(y, h, w)


CONFIGS = {  # img_size: the default training patch (`train_patch` option; module docstring)
    "uformer-t": dict(embed_dim=16, depths=(2,) * 9, modulator=True, img_size=TRAIN_PATCH),
    "uformer-s": dict(embed_dim=32, depths=(2,) * 9, modulator=True, img_size=TRAIN_PATCH),
    "uformer-b": dict(embed_dim=32, depths=(1, 2, 8, 8, 2, 8, 8, 2, 1), modulator=True, img_size=TRAIN_PATCH),
    "uformer-nano": dict(embed_dim=8, depths=(1, 1, 1, 1, 2, 1, 1, 1, 1), num_heads=(1, 1, 2, 4, 8, 8, 4, 2, 1),
                         modulator=True, mlp_ratio=2.0, img_size=128),  # its bundled weights: 128-px crops
}

CONTRACT = InputContract(value_range=(0.0, 1.0), tone_mapping=None, pad_multiple=128, square=True,
                         pad_mode="zeros-centre",
                         note="square, side a multiple of 128 (official test zero-pads to a centred square)")

PAPER = "Wang et al., Uformer: A General U-Shaped Transformer for Image Restoration, CVPR 2022"


def _window_and_modulator(config: str) -> tuple[int, bool]:
    return CONFIGS[config].get("win_size", 8), CONFIGS[config].get("modulator", False)


def _train_patch_option(config: str) -> Option:
    win, modulator = _window_and_modulator(config)

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"must be a whole number of pixels ({valid_train_patches(win, modulator)})") from None
        problem = train_patch_problem(value, win, modulator)
        if problem:
            raise ValueError(f"{problem}; use {valid_train_patches(win, modulator)}")
        return value

    return Option(default=CONFIGS[config]["img_size"], parse=parse,
                  help="side in px of the training crops the checkpoint was trained at, the official --train_ps; "
                       "it decides which stages are one unshifted window")


def _checkpoint_hint(config: str):
    """For a checkpoint that does not fit: the train_patch its bottleneck window implies, if another one."""
    win, _ = _window_and_modulator(config)
    scale = 2 ** (LEVELS - 1)  # train_patch / bottleneck side

    def hint(state: dict, options: dict) -> str | None:
        table = state.get("conv.blocks.0.attn.relative_position_bias_table")
        if table is None or table.ndim != 2:
            return None
        window = (round(table.shape[0] ** 0.5) + 1) // 2  # (2w-1)² rows
        if window > win or window == stage_window(options["train_patch"] // scale, win, 0)[0]:
            return None  # not what differs
        if window == win:
            return (f"its windows are full size in every stage, so it was trained at train_patch {scale * win} or "
                    f"larger: pass --model {config}:train_patch={max(scale * win, TRAIN_PATCH)} (or the patch it "
                    "was trained at; the shapes cannot tell those apart)")
        return (f"its bottleneck window is {window} px, so it was trained at train_patch={scale * window}: pass "
                f"--model {config}:train_patch={scale * window}")

    return hint


BLOCKS = (LeWinBlock,)  # checkpointed one by one under --memory low (udcbench.models.memory)

def _build(img_size: int, train_patch: int | None = None, **config) -> Uformer:
    """A configuration's Uformer, trained at `train_patch` (the option; default: its img_size)."""
    return Uformer(**config, img_size=img_size if train_patch is None else train_patch)


def _per_config(config: str) -> dict:
    return {"options": {"train_patch": _train_patch_option(config)}, "checkpoint_hint": _checkpoint_hint(config)}


register_configs("uformer", CONFIGS, _build, _per_config, contract=CONTRACT, paper=PAPER, blocks=BLOCKS,
                 checkpoint_format="{'state_dict': ...} from DataParallel ('module.' prefix)")
