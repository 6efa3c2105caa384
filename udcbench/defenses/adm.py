"""OpenAI guided-diffusion ("ADM", Dhariwal & Nichol 2021) UNet checkpoints as purification priors.

Why: the released ADM models (e.g. `256x256_diffusion_uncond.pt`, a plain `torch.save` of the UNetModel state dict)
are the priors that DiffPure-style purification papers use, so udcbench must load them exactly. This module
re-implements the UNetModel from its architecture description with the same module names, so a released state dict
loads strictly (every key, every shape) with `torch.load(weights_only=True)` — no pickled code is ever run.

- `ADM_FLAGS`: guided-diffusion's model flags, {name: (default, type)}; `ADM_CONFIGS`: named full flag sets.
- `parse_adm_config("adm-256-uncond")` or `parse_adm_config("adm:num_channels=128;attention_resolutions=16/8")`.
- `ADMUNet(flags)`: forward(x, t) -> (B, 3 or 6, H, W) (6 = ε̂ then the learned-σ interpolation v).
- `adm_parameter_count(flags)`; loading released checkpoints: `adm_checkpoint.load_adm_prior(path, config)`.

Weights are loaded as float32 whatever the file stores; `ADMUNet.half_precision()` gives guided-diffusion's fp16
mode (body convolutions in float16, GroupNorm and the time embedding in float32). The networks are built without
guided-diffusion's zero initialisation: they exist to load trained weights, not to be trained from scratch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.errors import SpecError
from udcbench.registry import did_you_mean

ADM_FLAGS: dict[str, tuple[object, type]] = {
    "image_size": (64, int), "num_channels": (128, int), "num_res_blocks": (2, int), "channel_mult": ((), tuple),
    "attention_resolutions": ((16, 8), tuple), "num_heads": (4, int), "num_head_channels": (-1, int),
    "num_heads_upsample": (-1, int), "learn_sigma": (False, bool), "class_cond": (False, bool),
    "resblock_updown": (False, bool), "use_scale_shift_norm": (True, bool), "use_new_attention_order": (False, bool),
    "use_checkpoint": (False, bool), "dropout": (0.0, float), "use_fp16": (False, bool),
    "diffusion_steps": (1000, int), "noise_schedule": ("linear", str),
}
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
NOISE_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
CONFIG_FORM = "adm:flag=value;flag=value (lists as 32/16/8)"


def _coerce(name: str, value: object) -> object:
    """One flag value converted to its type; strings as written on a command line, lists as 1/2/2 or 1-2-2."""
    kind = ADM_FLAGS[name][1]
    try:
        if kind is tuple:
            items = value.replace("/", ",").replace("-", ",").split(",") if isinstance(value, str) else list(value)
            numbers = [float(item) for item in items if str(item).strip()]
            return tuple(int(n) if n.is_integer() else n for n in numbers)
        if kind is bool:
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.strip().lower() in ("true", "1", "yes")
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if kind is int:
            number = float(value) if not isinstance(value, bool) else math.nan
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        return kind(value)
    except (TypeError, ValueError, AttributeError):
        expected = {tuple: "a list of numbers such as 32/16/8", bool: "true or false"}.get(kind, kind.__name__)
        raise SpecError(f"ADM flag {name}={value!r} is not valid; expected {expected}") from None


def complete_flags(flags: dict) -> dict:
    """Every flag of ADM_FLAGS filled in (defaults for the absent ones), typed and checked."""
    unknown = sorted(set(flags) - set(ADM_FLAGS))
    if unknown:
        named = ", ".join(f"{flag}{did_you_mean(flag, ADM_FLAGS)}" for flag in unknown)
        raise SpecError(f"unknown ADM flag(s) {named}; valid flags: {', '.join(ADM_FLAGS)}")
    full = {name: _coerce(name, flags.get(name, default)) for name, (default, _) in ADM_FLAGS.items()}
    if full["class_cond"]:
        raise SpecError("class_cond=true is refused: udcbench purifies with unconditional models; use an "
                        "unconditional ADM checkpoint such as 256x256_diffusion_uncond.pt (class_cond=false)")
    if full["noise_schedule"] not in NOISE_SCHEDULES:
        raise SpecError(f"ADM noise_schedule {full['noise_schedule']!r} is not supported; use linear or cosine")
    return full


def parse_adm_config(text: str) -> dict:
    """A full flag dict from a config name (`adm-256-uncond`), `adm:flag=value;…`, or `NAME:flag=value;…`."""
    name, _, overrides = text.strip().partition(":")
    if name != "adm" and name not in ADM_CONFIGS:
        raise SpecError(f"unknown ADM config {name!r}{did_you_mean(name, ADM_CONFIGS)}; use one of "
                        f"{', '.join(ADM_CONFIGS)} or {CONFIG_FORM}")
    flags = dict(ADM_CONFIGS.get(name, {}))
    for piece in filter(None, (p.strip() for p in overrides.replace(",", ";").split(";"))):
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"ADM config piece {piece!r} is not flag=value; write {CONFIG_FORM}")
        if key.strip() not in ADM_FLAGS:
            raise SpecError(f"unknown ADM flag {key.strip()!r}{did_you_mean(key.strip(), ADM_FLAGS)}; valid flags: "
                            f"{', '.join(ADM_FLAGS)}")
        flags[key.strip()] = value.strip()
    return complete_flags(flags)


def group_adm_flags(argument: str) -> str:
    """`config=adm:f=v,g=1,2` → `config=adm:f=v;g=1/2`: the pieces after `config=NAME:` that set an ADM flag (and
    bare values continuing a list flag such as attention_resolutions=32,16,8) belong to the config."""
    pieces, grouped, inside = argument.split(","), [], False
    for piece in pieces:
        key, equals, _ = piece.partition("=")
        if key.strip() == "config" and ":" in piece.split("=", 1)[1]:
            grouped.append(piece.strip())
            inside = True
        elif inside and equals and key.strip() in ADM_FLAGS:
            grouped[-1] += ";" + piece.strip()
        elif inside and not equals and piece.strip() and grouped[-1].rsplit(";", 1)[-1].count("="):
            grouped[-1] += "/" + piece.strip()  # 32,16,8 of a list flag
        else:
            inside = False
            grouped.append(piece)
    return ",".join(grouped)


_RELEASE_256 = {"image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_heads": 4,
                "num_head_channels": 64, "attention_resolutions": (32, 16, 8), "channel_mult": (1, 1, 2, 2, 4, 4),
                "dropout": 0.0, "learn_sigma": True, "class_cond": False, "resblock_updown": True,
                "use_scale_shift_norm": True, "use_new_attention_order": False, "use_fp16": True,
                "diffusion_steps": 1000, "noise_schedule": "linear"}
ADM_CONFIGS: dict[str, dict] = {
    "adm-256-uncond": complete_flags(_RELEASE_256),  # 256x256_diffusion_uncond.pt
    "adm-lsun-256": complete_flags({**_RELEASE_256, "dropout": 0.1}),  # lsun_bedroom.pt, lsun_cat.pt, lsun_horse.pt
}


# --- the network ---------------------------------------------------------------------------------------------

class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (as guided-diffusion's GroupNorm32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(32, channels)  # guided-diffusion's normalization(): always 32 groups


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM's sinusoidal embedding of (B,) timesteps: (B, dim), cosines first, then sines (zero-padded if odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def qkv_attention(qkv: torch.Tensor, heads: int, new_order: bool = False) -> torch.Tensor:
    """Multi-head attention over (B, 3·heads·ch, L): legacy order splits heads first, then q/k/v per head;
    the new order splits q/k/v first, then heads. Returns (B, heads·ch, L)."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    if new_order:
        q, k, v = (part.reshape(bs * heads, ch, length) for part in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(bs * heads, 3 * ch, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands the time embedding to its ResBlocks and only x to the other layers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.op = (nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out = out_channels or channels
        self.use_scale_shift_norm, self.updown = use_scale_shift_norm, up or down
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1))
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(normalization(out), nn.SiLU(), nn.Dropout(p=dropout),
                                        nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False):
        super().__init__()
        if num_head_channels != -1 and channels % num_head_channels:
            raise SpecError(f"ADM attention over {channels} channels cannot use num_head_channels="
                            f"{num_head_channels}; pick a divisor of every attended width")
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        x = x.reshape(b, c, height * width)
        h = self.proj_out(qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.new_order))
        return (x + h).reshape(b, c, height, width)


def resolve_channel_mult(flags: dict) -> tuple:
    """channel_mult as given, or guided-diffusion's default for image_size when empty."""
    if flags["channel_mult"]:
        return tuple(flags["channel_mult"])
    if flags["image_size"] not in DEFAULT_CHANNEL_MULT:
        raise SpecError(f"ADM has no default channel_mult for image_size={flags['image_size']}; pass one, e.g. "
                        "adm:…;channel_mult=1/2/2/2")
    return DEFAULT_CHANNEL_MULT[flags["image_size"]]


class ADMUNet(nn.Module):
    """guided-diffusion's UNetModel (unconditional, 2-D, RGB): module names equal the official state-dict keys."""

    def __init__(self, flags: dict):
        super().__init__()
        flags = complete_flags(flags)
        mults, size = resolve_channel_mult(flags), flags["image_size"]
        if any(res <= 0 or size % res for res in flags["attention_resolutions"]):
            raise SpecError(f"ADM attention_resolutions {flags['attention_resolutions']} must divide image_size "
                            f"{size}; write them as image resolutions, e.g. 32/16/8")
        if any(int(m * flags["num_channels"]) % 32 for m in mults):
            raise SpecError(f"ADM widths num_channels × channel_mult ({flags['num_channels']} × {mults}) must divide "
                            "by 32, the GroupNorm group count; pick another num_channels or channel_mult")
        self.config = {**flags, "channel_mult": list(mults),
                       "attention_resolutions": list(flags["attention_resolutions"])}
        self.multiple = 2 ** (len(mults) - 1)
        self.out_channels = 6 if flags["learn_sigma"] else 3
        self.model_channels = mc = flags["num_channels"]
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        attention_ds = {size // res for res in flags["attention_resolutions"]}
        heads_up = flags["num_heads_upsample"] if flags["num_heads_upsample"] != -1 else flags["num_heads"]

        def res(ch_in: int, ch_out: int, **updown) -> ResBlock:
            return ResBlock(ch_in, emb_dim, flags["dropout"], ch_out, flags["use_scale_shift_norm"], **updown)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, flags["num_head_channels"], flags["use_new_attention_order"])

        ch = input_ch = int(mults[0] * mc)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(mults):
            for _ in range(flags["num_res_blocks"]):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attention_ds:
                    layers.append(attn(ch, flags["num_heads"]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(mults) - 1:
                down = res(ch, ch, down=True) if flags["resblock_updown"] else Downsample(ch, True, ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, flags["num_heads"]), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(flags["num_res_blocks"] + 1):
                layers = [res(ch + chans.pop(), int(mc * mult))]
                ch = int(mc * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == flags["num_res_blocks"]:
                    layers.append(res(ch, ch, up=True) if flags["resblock_updown"] else Upsample(ch, True, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, self.out_channels, 3, padding=1))

    def half_precision(self) -> "ADMUNet":
        """guided-diffusion's fp16 mode: the convolutions of the input, middle and output blocks in float16;
        norms, the time embedding and the output head stay float32. Returns self."""
        for body in (self.input_blocks, self.middle_block, self.output_blocks):
            for module in body.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.half()
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise SpecError(f"ADMUNet needs H and W divisible by {self.multiple}, got {tuple(x.shape[-2:])}; "
                            "pad the input (purify does this for you)")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h, hs = x.to(self.input_blocks[0][0].weight.dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.to(x.dtype)).to(x.dtype)


def adm_parameter_count(flags: dict) -> int:
    """Parameters of the ADMUNet for these flags, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in ADMUNet(flags).parameters())
