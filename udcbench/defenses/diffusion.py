"""The image prior behind purification: a small DDPM (Ho et al., NeurIPS 2020) that predicts the noise ε.

- `Schedule`: the forward process q(x_t | x_0) = N(sqrt(ᾱ_t)·x_0, (1 − ᾱ_t)·I) with T = 1000 steps and the linear
  β schedule 1e-4 … 0.02 of the paper (also diffusers' "scaled_linear" and "squaredcos_cap_v2", the cosine
  schedule of Nichol & Dhariwal 2021, so a diffusers scheduler config maps onto it). Images live in [-1, 1].
- `PriorUNet`: the DDPM UNet at toy scale — sinusoidal time embedding, ResBlocks (GroupNorm, SiLU, the time
  embedding added between the two convolutions), strided-conv down / nearest+conv up sampling, skip connections,
  one self-attention block in the middle (lowest resolution). Default base 32, mults (1, 2, 2): 1,063,651
  parameters; in our toy-scale measurements a ~1.4 M-parameter prior trained for 60 s on 64 px crops purifies within
  0.1 dB of one trained 10 min.
- `DiffusionPrior`: the network + schedule + native crop `size`; `predict_noise(x_t, t)`.
- `save_prior` / `load_prior`: one .safetensors whose header carries the configuration, or a local diffusers
  directory (a `UNet2DModel` + a scheduler config; needs the optional extra: pip install -c constraints.txt
  'udcbench[diffusers]').
- `prior_training.train_prior`: ε-prediction training on random crops of clean images (Adam, cosine LR,
  clipping, EMA).

    prior = prior_training.train_prior(clean_images, steps=200, seed=0)
    save_prior(prior, "prior.safetensors"); prior = load_prior("prior.safetensors")
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.errors import CheckpointError, MissingExtraError, SpecError

FORMAT = "udcbench-diffusion-prior/1"
SCHEDULE_KINDS = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch files a diffusers folder may hold


class Schedule:
    """DDPM noise schedule: `betas`, `alphas_cumprod` (ᾱ_t) as float64 tensors of length T (index t = 0 … T−1).

    kind: "linear" (Ho et al.: β from beta_start to beta_end), "scaled_linear" (√β linear; Stable Diffusion),
    "squaredcos_cap_v2" (Nichol & Dhariwal's cosine ᾱ, β capped at 0.999). `betas` overrides all of them.
    """

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, kind: str = "linear",
                 betas: Iterable[float] | None = None):
        if betas is not None:
            values = torch.as_tensor(list(betas), dtype=torch.float64)
            T, kind = len(values), "custom"
        elif kind == "linear":
            values = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif kind == "scaled_linear":
            values = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            def alpha_bar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
            values = torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                                  dtype=torch.float64)
        else:
            raise SpecError(f"unknown beta schedule {kind!r}; use one of {', '.join(SCHEDULE_KINDS)}")
        if T < 1 or not bool(((values > 0) & (values < 1)).all()):
            raise SpecError(f"the {kind} schedule with T={T} gives betas outside (0, 1); check beta_start/beta_end")
        self.T, self.kind, self.beta_start, self.beta_end = int(T), kind, float(beta_start), float(beta_end)
        self.betas = values
        self.alphas_cumprod = torch.cumprod(1 - values, dim=0)

    def alpha_bar(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t as a tensor on `like`'s device and dtype, shaped to broadcast over (B, C, H, W); t = −1 gives 1."""
        index = torch.as_tensor(t).reshape(-1).long().cpu()
        value = torch.where(index >= 0, self.alphas_cumprod[index.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return value.to(device=like.device, dtype=like.dtype).reshape(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise (x0 in [-1, 1]); t is an int or a (B,) tensor."""
        alpha_bar = self.alpha_bar(t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def config(self) -> dict:
        if self.kind == "custom":
            return {"betas": self.betas.tolist()}
        return {"T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end, "kind": self.kind}


# --- the network ---------------------------------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps (Vaswani et al. 2017, as used by DDPM): (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.time = nn.Linear(time_dim, channels_out)
        self.norm2 = nn.GroupNorm(groups, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(embedding))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class PriorUNet(nn.Module):
    """ε-prediction UNet (DDPM layout at toy scale). Input/output (B, 3, H, W), H and W multiples of `multiple`.

    base: channels at full resolution (32); mults: channel multipliers per level ((1, 2, 2): 32, 64, 64);
    res_blocks: ResBlocks per level on the way down (one more on the way up, as in DDPM); attention_at: levels
    whose ResBlocks are each followed by self-attention (default none — the middle block always has one, at the
    lowest resolution); time_dim: width of the time embedding (4·base); groups: GroupNorm groups (8).
    """

    def __init__(self, base: int = 32, mults: tuple[int, ...] = (1, 2, 2), res_blocks: int = 1,
                 attention_at: tuple[int, ...] = (), time_dim: int | None = None, groups: int = 8):
        super().__init__()
        mults, attention_at = tuple(int(m) for m in mults), tuple(int(a) for a in attention_at)
        time_dim = int(time_dim or 4 * base)
        widths = [base * m for m in mults]
        if not mults or res_blocks < 1 or any(w % groups for w in widths):
            raise SpecError(f"PriorUNet(base={base}, mults={mults}, res_blocks={res_blocks}, groups={groups}) is "
                            "invalid: every width base·mult must divide by groups, and res_blocks ≥ 1")
        self.config = {"base": base, "mults": list(mults), "res_blocks": res_blocks,
                       "attention_at": list(attention_at), "time_dim": time_dim, "groups": groups}
        self.multiple = 2 ** (len(mults) - 1)
        self.time_mlp = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(3, base, 3, padding=1)
        self.down, skips, channels = nn.ModuleList(), [base], base
        for level, width in enumerate(widths):
            for _ in range(res_blocks):
                self.down.append(ResBlock(channels, width, time_dim, groups))
                channels = width
                if level in attention_at:
                    self.down.append(SelfAttention(channels, groups))
                skips.append(channels)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
                skips.append(channels)
        self.middle = nn.ModuleList([ResBlock(channels, channels, time_dim, groups),
                                     SelfAttention(channels, groups), ResBlock(channels, channels, time_dim, groups)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(res_blocks + 1):
                self.up.append(ResBlock(channels + skips.pop(), width, time_dim, groups))
                channels = width
                if level in attention_at:
                    self.up.append(SelfAttention(channels, groups))
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(channels, channels, 3, padding=1)))
        self.norm_out = nn.GroupNorm(groups, channels)
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise SpecError(f"PriorUNet needs H and W divisible by {self.multiple}, got {tuple(x.shape[-2:])}; "
                            "pad the input (purify does this for you)")
        embedding = self.time_mlp(timestep_embedding(t.reshape(-1).expand(x.shape[0]), self.config["base"]))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, embedding) if isinstance(layer, ResBlock) else layer(h)
            if not isinstance(layer, SelfAttention):
                skips.append(h)
        for layer in self.middle:
            h = layer(h, embedding) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiffusionPrior(nn.Module):
    """A noise-predicting network with its schedule. `size`: the native crop it was trained on (tiles for
    purification); `multiple`: H and W must divide by it; `prediction_type`: "epsilon" or "v_prediction"."""

    def __init__(self, unet: nn.Module, schedule: Schedule | None = None, size: int = 64, multiple: int | None = None,
                 prediction_type: str = "epsilon", meta: dict[str, str] | None = None, learned_sigma: bool = False):
        super().__init__()
        self.learned_sigma = bool(learned_sigma)  # unet returns 6 channels: ε̂ then the variance interpolation v
        if prediction_type not in PREDICTION_TYPES:
            raise CheckpointError(f"prediction_type {prediction_type!r} is not supported; udcbench purifies with "
                                  f"{' or '.join(PREDICTION_TYPES)} models")
        self.unet, self.schedule, self.size = unet, schedule or Schedule(), int(size)
        self.multiple = int(multiple or getattr(unet, "multiple", 1))
        self.prediction_type, self.meta = prediction_type, dict(meta or {})

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """ε̂(x_t, t) for x_t (B, 3, H, W) in model space; t an int or a (B,) tensor of indices in [0, T).
        A learned-σ prior returns (B, 6, H, W): ε̂, then v ∈ [−1, 1], the interpolation of the log variance between
        β_t (v = 1) and the posterior β̃_t (v = −1) — Nichol & Dhariwal 2021 (`learned_log_variance`)."""
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).long().expand(x_t.shape[0])
        output = self.unet(x_t, t)
        variance = None
        if self.learned_sigma:
            output, variance = output[:, :3], output[:, 3:]
        if self.prediction_type == "v_prediction":  # v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0  ⇒  ε = sqrt(ᾱ)·v + sqrt(1−ᾱ)·x_t
            alpha_bar = self.schedule.alpha_bar(t, x_t)
            output = alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x_t
        return output if variance is None else torch.cat([output, variance], dim=1)

    def predict_noise(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """ε̂(x_t, t), (B, 3, H, W): the noise prediction alone (a learned-σ prior's v channels dropped)."""
        return self.predict(x_t, t)[:, :3]

    def forward(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.predict_noise(x_t, t)


def learned_log_variance(v: torch.Tensor, beta: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """log σ² = frac·log β + (1 − frac)·log β̃ with frac = (v + 1)/2 (Nichol & Dhariwal 2021, eq. 15): a learned-σ
    prior's variance for one reverse step; beta and posterior (β̃ > 0) broadcast over v."""
    frac = (v + 1) / 2
    return frac * beta.log() + (1 - frac) * posterior.log()


# --- saving and loading --------------------------------------------------------------------------------------

def save_prior(prior: DiffusionPrior, path: str | Path, meta: dict[str, str] | None = None) -> None:
    """Write a PriorUNet-based prior to one .safetensors file; the configuration goes into its header."""
    from safetensors.torch import save_file

    if not isinstance(prior.unet, PriorUNet):
        raise SpecError(f"save_prior writes PriorUNet priors only, not {type(prior.unet).__name__}; keep a diffusers "
                        "prior in its own directory (UNet2DModel.save_pretrained)")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SpecError(f"save_prior writes safetensors; name the file *.safetensors, not {path.name}")
    header = {**prior.meta, **{k: str(v) for k, v in (meta or {}).items()}}
    header.update(format=FORMAT, unet=json.dumps(prior.unet.config), schedule=json.dumps(prior.schedule.config()),
                  size=str(prior.size), prediction_type=prior.prediction_type)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in prior.unet.state_dict().items()}, str(tmp), metadata=header)
    tmp.replace(path)


def load_prior(path: str | Path) -> DiffusionPrior:
    """A prior from a save_prior .safetensors file or a local diffusers directory (eval mode, no grads).
    guided-diffusion (ADM) .pt checkpoints load with `adm.load_adm_prior(path, config)`."""
    from udcbench.models.checkpoints import load_into, read_state_dict

    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        raise CheckpointError(f"prior {path} is a torch checkpoint; say which guided-diffusion architecture it is: "
                              "config=adm-256-uncond (256x256_diffusion_uncond.pt) or config=adm:flag=value,…")
    if not path.exists():
        raise CheckpointError(f"diffusion prior {path} does not exist; pass a .safetensors file written by "
                              "save_prior or a diffusers directory (unet/ + scheduler/)")
    if path.is_dir():
        prior = _load_diffusers_prior(path)
    else:
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; priors are saved with save_prior as "
                                  "*.safetensors (or pass a diffusers directory)")
        state, header = read_state_dict(path)
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a udcbench diffusion prior (its header has no format={FORMAT}); "
                                  "write priors with udcbench.defenses.diffusion.save_prior")
        try:
            config = json.loads(header["unet"])
            unet = PriorUNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
            schedule = Schedule(**json.loads(header["schedule"]))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path} has a damaged prior header ({error}); save the prior again") from None
        load_into(unet, state, str(path))
        extra = {k: v for k, v in header.items() if k not in ("format", "unet", "schedule", "size", "prediction_type")}
        prior = DiffusionPrior(unet, schedule, size=int(header.get("size", 64)),
                               prediction_type=header.get("prediction_type", "epsilon"), meta=extra)
    prior.eval()
    for parameter in prior.parameters():
        parameter.requires_grad_(False)
    return prior


class _DiffusersUNet(nn.Module):
    """Adapts diffusers' UNet2DModel (which returns an output object) to the `unet(x, t) -> tensor` call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t).sample


def _load_diffusers_prior(path: Path) -> DiffusionPrior:
    """A pipeline directory (unet/ + scheduler/) or a flat one (config.json + scheduler_config.json, as the
    google/ddpm-* repositories are laid out); local files only, never the network. Every torch file in it is
    first read by udcbench itself with weights_only (models.checkpoints), so pickled code is refused whatever
    diffusers version is installed and however it calls torch.load."""
    from udcbench.models.checkpoints import check_finite, first_sentence, load_file

    unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
    schedulers = [p for p in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json")
                  if p.is_file()]
    weights = [p for p in (unet_dir / "diffusion_pytorch_model.safetensors", unet_dir / "diffusion_pytorch_model.bin")
               if p.is_file()]
    if not (unet_dir / "config.json").is_file() or not schedulers or not weights:
        listing = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())[:12]) or "nothing"
        raise CheckpointError(f"{path} is not a diffusers prior directory (it holds: {listing}); it needs "
                              "unet/config.json + unet/diffusion_pytorch_model.safetensors (or .bin) and "
                              "scheduler/scheduler_config.json — or pass a .safetensors file written by save_prior")
    try:
        unet_config = json.loads((unet_dir / "config.json").read_text())
        scheduler_config = json.loads(schedulers[0].read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read the configs in {path}: {error}; download the directory again") from None
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{unet_dir} holds a {unet_config.get('_class_name')}; udcbench purifies in pixel "
                              "space with an unconditional UNet2DModel (e.g. a google/ddpm-* checkpoint)")
    try:
        schedule = Schedule(T=int(scheduler_config.get("num_train_timesteps", 1000)),
                            beta_start=float(scheduler_config.get("beta_start", 1e-4)),
                            beta_end=float(scheduler_config.get("beta_end", 0.02)),
                            kind=scheduler_config.get("beta_schedule", "linear"),
                            betas=scheduler_config.get("trained_betas"))
    except SpecError as error:
        raise CheckpointError(f"{schedulers[0]}: {error}") from None
    try:
        import diffusers
        from diffusers.utils import logging as diffusers_logging
    except Exception as error:  # an absent or broken install
        raise MissingExtraError(f"loading the diffusers prior {path} needs the optional diffusers package "
                                f"({type(error).__name__}: {str(error)[:100]}); install it with "
                                "pip install -c constraints.txt 'udcbench[diffusers]'") from None
    for pickled in sorted(p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file()):
        load_file(pickled, mmap=True)  # refused here if it carries code, whichever torch.load diffusers calls
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # diffusers' and torch's deprecation notes are not the user's business
            warnings.simplefilter("ignore")
            model, info = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True,
                                                                low_cpu_mem_usage=False, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"diffusers cannot load {unet_dir}: {first_sentence(error)}; check that "
                              "the weights match unet/config.json") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    problems = [f"{len(keys)} {kind} keys: {', '.join(sorted(map(str, keys))[:4])}"
                for kind in ("missing", "unexpected", "mismatched") if (keys := info.get(f"{kind}_keys"))]
    if problems:
        raise CheckpointError(f"{unet_dir} does not fit its config: " + "; ".join(problems)
                              + " — check that the weights belong to this unet/config.json")
    check_finite(model.state_dict(), str(unet_dir))
    if model.config.in_channels != 3 or model.config.out_channels != 3:
        raise CheckpointError(f"{unet_dir} maps {model.config.in_channels} to {model.config.out_channels} channels; "
                              "purification needs an RGB pixel-space model (3 → 3)")
    size = model.config.sample_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    return DiffusionPrior(_DiffusersUNet(model), schedule, size=size,
                          multiple=2 ** (len(model.config.block_out_channels) - 1),
                          prediction_type=scheduler_config.get("prediction_type", "epsilon"),
                          meta={"source": str(path), "diffusers": diffusers.__version__})
