"""Diffusion purification (DiffPure: Nie et al., "Diffusion Models for Adversarial Purification", ICML 2022).

The input is diffused forward to a small timestep t* — enough Gaussian noise to drown an L∞ perturbation of a
few /255 — and then denoised back to the clean image with a pretrained prior, which pulls it toward clean images:

    x_t* = sqrt(ᾱ_t*)·(2·image − 1) + sqrt(1 − ᾱ_t*)·ε,   then `steps` reverse steps t* → … → ᾱ = 1

Reverse samplers: "ddim" (Song et al., ICLR 2021, η = 0: deterministic given x_t*) or "ddpm" (Ho et al. 2020,
ancestral sampling with the posterior variance β̃, over the same strided timesteps). All noise comes from one
`generator` and is drawn at the full image size, so tiling never changes which noise a pixel sees. The whole
chain is differentiable w.r.t. the image (adaptive attacks backpropagate through the few DDIM steps).

Timestep conventions (`index`; `visited_timesteps(t_star, steps, index)` lists them and the sampler runs exactly
that list). ᾱ_i is `schedule.alphas_cumprod[i]`, the 0-based array of the T = 1000-step schedule; index −1 means
ᾱ = 1, the clean image.

- index=udcbench (default): t* IS the 0-based index. The input is diffused with ᾱ_{t*}; ε̂ is evaluated at
  ⌊t*·k/steps⌋ for k = steps … 1 and the last step goes straight to ᾱ = 1 (index 0 is never visited). t* = 30,
  steps = 2: diffuse with ᾱ_30, ε̂ at 30 → ᾱ_15, ε̂ at 15 → ᾱ = 1; visited_timesteps(30, 2) == [30, 15, −1].
  Valid t*: 0 … T−1.
- index=diffpure: t* counts noise levels as DiffPure's code (runners/diffpure_guided.py, inherited from SDEdit)
  does: x = x0·sqrt(a[t−1]) + e·sqrt(1 − a[t−1]), then p_sample at i = t−1, …, 0, the step at 0 landing on
  ᾱ = 1 (alphas_cumprod_prev[0] = 1, no noise). Here: the udcbench grid shifted down one index — diffuse with
  ᾱ_{t*−1}, ε̂ at ⌊t*·k/steps⌋ − 1 for k = steps … 1, then ᾱ = 1. With steps = t* this is DiffPure's chain
  exactly (t* − 1, …, 0); with fewer steps it is its strided analogue — what diffusers img2img visits with
  "trailing" spacing, strength t*/T and n = T·steps/t* inference steps, when that n is an integer.
  visited_timesteps(30, 2, "diffpure") == [29, 14, −1]. Valid t*: 0 … T. With sampler=ddpm and steps = t*
  the chain is guided-diffusion's p_sample loop (x̂0 clipped to [−1, 1], fixed posterior variance β̃; a model
  with a learned variance, as guided-diffusion's ImageNet one, would use that instead).

For comparison, diffusers' DDIMScheduler (set_alpha_to_one=True) in img2img keeps the last ⌊n·strength⌋ of
its n timesteps, diffuses to the first kept one and steps from the last to ᾱ = 1; its grid is anchored at T,
not t*: "leading" k·⌊T/n⌋ (n = 50: 980, …, 20, 0), "trailing" round(T − k·T/n) − 1 (999, …, 39, 19). With
n = T every spacing gives DiffPure's chain (strength 0.03: 29, …, 0). udcbench's default grid is "trailing"
plus one; index 0 is never visited.

Defaults: t* = 30 of T = 1000 and 2 DDIM steps — our toy-scale measurements put the best t* at 20–30 (+0.3 dB under
PGD-8, 0.1 dB clean cost; t* 100 costs 0.6 dB, t* 200 1.4 dB) and DDIM 2 steps within 0.02 dB of 10 steps.

Guided reverse steps (`guide=mse|adv`, `guide.py`) shift each step's ε̂ toward the input; `checkpoint` keeps one
reverse step's activations at a time when an adaptive attack differentiates through the chain (the noise is all
drawn before the first step, so recomputation sees the same draws). Priors: udcbench's own, diffusers folders, and
guided-diffusion (ADM) checkpoints (`prior=FILE.pt,config=adm-256-uncond`; `adm.py`, `adm_checkpoint.py`), whose
learned σ sets the DDPM variance.

Images larger than the prior's native size are processed in overlapping tiles of that size (`overlap` 16 px)
blended with raised-cosine weights, so there are no seams; smaller ones are reflect-padded and cropped back.

    defense = PurifyDefense("t=30,steps=2", prior=load_prior("prior.safetensors"))
    purified = defense.transform(images, torch.Generator().manual_seed(0))
    PurifyDefense("t=100,steps=100,index=diffpure", prior=prior)   # DiffPure's own chain: 99, 98, …, 0
"""

from __future__ import annotations

import re
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from udcbench.defenses.base import DefenseComponent, Setting, choice, word
from udcbench.defenses.diffusion import DiffusionPrior, learned_log_variance
from udcbench.defenses.guide import DEFAULT_SCALE, parse_guide, parse_scale
from udcbench.defenses import noise_level
from udcbench.defenses.noise_level import AUTO_KEYS
from udcbench.defenses.tiling import predict_tiled
from udcbench.registry import did_you_mean, register_defense
from udcbench.errors import SpecError

SAMPLERS = ("ddim", "ddpm")
INDEXES = ("udcbench", "diffpure")  # how t* indexes the schedule (module docstring); the first is the default
DEFAULT_INDEX = INDEXES[0]
DEFAULT_T_STAR = 30
DEFAULT_STEPS = 2
DEFAULT_OVERLAP = 16


def visited_timesteps(t_star: int, steps: int, index: str = DEFAULT_INDEX) -> list[int]:
    """The schedule indices purification visits, in order: steps + 1 entries (none for t* = 0, which returns
    the input). The first is the index the input is diffused to; ε̂ is evaluated at the first `steps` entries,
    each step moving to the next; the last is −1, ᾱ = 1 (the clean image). `purify` runs exactly this list.

        visited_timesteps(30, 2) == [30, 15, -1]                # udcbench: ᾱ_30, ᾱ_15, then ᾱ = 1
        visited_timesteps(30, 2, "diffpure") == [29, 14, -1]    # DiffPure's t − 1 indexing, strided
        visited_timesteps(4, 4, "diffpure") == [3, 2, 1, 0, -1] # DiffPure's own chain
    """
    check_index(index)
    if t_star == 0:
        return []
    shift = 1 if index == "diffpure" else 0
    return [t_star * (steps - i) // steps - shift for i in range(steps)] + [-1]


def reverse_timesteps(t_star: int, steps: int, index: str = DEFAULT_INDEX) -> list[int]:
    """The `steps` timesteps where ε̂ is evaluated, e.g. (30, 2) -> [30, 15]; the last one steps to ᾱ = 1."""
    return visited_timesteps(t_star, steps, index)[:-1]


def check_index(index: str) -> None:
    if index not in INDEXES:
        raise SpecError(f"unknown index {index!r}{did_you_mean(index, INDEXES)}; use udcbench (t* is the 0-based "
                        "schedule index: ᾱ_t*, the default) "
                        "or diffpure (DiffPure/SDEdit's ᾱ_(t*−1)), e.g. purify:t=100,index=diffpure")


def _noise(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved to `like`."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def check_settings(t_star: int, steps: int, sampler: str, T: int | None = None,
                   index: str = DEFAULT_INDEX) -> None:
    """SpecError (with the fix) for a t*, step count, sampler or index purify cannot use. index=diffpure counts
    noise levels 1 … T (schedule index t* − 1), so t* = T is allowed there."""
    check_index(index)
    last = None if T is None else (T if index == "diffpure" else T - 1)
    if isinstance(t_star, bool) or not isinstance(t_star, int) or t_star < 0 or (last is not None and t_star > last):
        upper = f"[0, {'T' if T is None else T}{']' if index == 'diffpure' else ')'}"
        raise SpecError(f"t_star must be an integer timestep in {upper}, got {t_star!r}; t* 20–30 purified "
                        "best in our measurements (purify:t=30)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (t_star > 0 and steps > t_star):
        raise SpecError(f"steps must be an integer from 1 to t_star={t_star}, got {steps!r}; 2 DDIM steps match 10 "
                        "within 0.02 dB (purify:steps=2)")
    if sampler not in SAMPLERS:
        raise SpecError(f"unknown sampler {sampler!r}{did_you_mean(sampler, SAMPLERS)}; use one of "
                        f"{', '.join(SAMPLERS)} (purify:sampler=ddim)")


def _check_call(prior: DiffusionPrior, image: torch.Tensor, t_star, steps: int, sampler: str, tile: int | None,
                overlap: int, index: str) -> tuple[list[int], bool, int]:
    """(t* per image, per_image?, tile) after checking what `purify` was given; SpecError with the fix."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise SpecError(f"purify takes (B, 3, H, W) images, got shape {tuple(image.shape)}; add a batch dimension")
    per_image = isinstance(t_star, torch.Tensor)
    values = [int(v) for v in t_star.reshape(-1).tolist()] if per_image else [t_star]
    if per_image and len(values) != image.shape[0]:
        raise SpecError(f"purify got {len(values)} per-image t* for {image.shape[0]} images; give one per image")
    for value in values:
        check_settings(value, steps, sampler, prior.schedule.T, index)
    tile = prior.size if tile is None else tile
    if tile < prior.multiple or tile % prior.multiple or not 0 <= overlap < tile:
        raise SpecError(f"tile {tile} must be a positive multiple of {prior.multiple} and overlap {overlap} within "
                        f"[0, tile); the defaults (tile = prior.size = {prior.size}, overlap 16) work")
    return values, per_image, tile


def _reverse_step(prior: DiffusionPrior, t, previous, ancestral: bool, tile: int, overlap: int, guide,
                  x: torch.Tensor, start: torch.Tensor, noise: torch.Tensor,
                  fresh: torch.Tensor | None) -> torch.Tensor:
    """One reverse step x_t → x_previous: ε̂ (plus guidance), x̂₀ clipped, then DDIM (η = 0) or, when `ancestral`,
    the strided DDPM posterior with noise `fresh` (a learned-σ prior's variance when it has one). `start` is the
    input in model space and `noise` the ε₀ that diffused it (guidance targets y_t = q_sample(start, t, ε₀))."""
    schedule = prior.schedule
    output = predict_tiled(prior, x, t, tile, overlap)
    epsilon = output[:, :3]
    alpha_t, alpha_s = schedule.alpha_bar(t, x), schedule.alpha_bar(previous, x)
    if guide is not None:  # ε̂ + s·∇D/√(1 − ᾱ_t): x̂₀ moves the fraction s toward the input (guide.py)
        epsilon = epsilon + guide.scale * guide.gradient(x, schedule.q_sample(start, t, noise)) / (1 - alpha_t).sqrt()
    x0 = ((x - (1 - alpha_t).sqrt() * epsilon) / alpha_t.sqrt()).clamp(-1, 1)
    if not ancestral:
        return alpha_s.sqrt() * x0 + (1 - alpha_s).sqrt() * epsilon
    # posterior q(x_s | x_t, x0) of the strided chain (Ho et al. eq. 7 with ᾱ_t/ᾱ_s for α_t)
    beta = 1 - alpha_t / alpha_s
    mean = (alpha_s.sqrt() * beta * x0 + (alpha_t / alpha_s).sqrt() * (1 - alpha_s) * x) / (1 - alpha_t)
    variance = (1 - alpha_s) / (1 - alpha_t) * beta
    if prior.learned_sigma:  # guided-diffusion's learned range between β and β̃ of the (respaced) step
        variance = learned_log_variance(output[:, 3:], beta, variance).exp()
    return mean + variance.sqrt() * fresh


def purify(prior: DiffusionPrior, image: torch.Tensor, t_star: int | torch.Tensor = DEFAULT_T_STAR,
           steps: int = DEFAULT_STEPS, sampler: str = "ddim", generator: torch.Generator | None = None,
           tile: int | None = None, overlap: int = DEFAULT_OVERLAP, index: str = DEFAULT_INDEX,
           guide=None, checkpoint: bool = False) -> torch.Tensor:
    """Purify (B, 3, H, W) images in [0, 1]: diffuse to t_star, denoise back in `steps` steps; [0, 1] out.

    t_star: forward timestep (0 returns `image` itself; below T, or up to T with index="diffpure"), or a (B,)
    integer tensor of per-image timesteps (fine-tuning draws one per crop); steps: reverse steps, 1 … t_star
    (the schedule indices are `visited_timesteps(t_star, steps, index)`, ending at ᾱ = 1); sampler: "ddim"
    (η = 0) or "ddpm" (ancestral); generator: source of all noise (the global CPU generator when None); tile:
    tile side (default prior.size; a multiple of prior.multiple); overlap: tile overlap in px (default 16);
    index: "udcbench" (t* is the 0-based schedule index, default) or "diffpure" (index t* − 1, as DiffPure's
    code) — see the module docstring; guide: None, or a guide from `guide.make_guide` (guided reverse steps);
    checkpoint: when gradients flow, keep one reverse step's activations at a time and recompute them in the
    backward pass (memory of one step instead of `steps`; the same values and gradients). All noise is drawn
    before the first step, in the order the steps use it. Gradients flow to `image` when grad mode is on:

        purified = purify(prior, images, t_star=30, steps=2, generator=torch.Generator().manual_seed(0))
    """
    values, per_image, tile = _check_call(prior, image, t_star, steps, sampler, tile, overlap, index)
    if max(values) == 0:
        return image
    # The visited schedule indices (steps + 1 of them, the last −1: ᾱ = 1), one list per image when t* is per
    # image; an image with t* = 0 runs a placeholder chain at index 0 and is put back untouched at the end.
    chains = [visited_timesteps(value, steps, index) or [0] * steps + [-1] for value in values]
    visits = [torch.tensor(column, dtype=torch.long) for column in zip(*chains)] if per_image else chains[0]
    noise = _noise(image.shape, generator, image)
    fresh = [_noise(image.shape, generator, image) if sampler == "ddpm" and step + 1 < steps else None
             for step in range(steps)]
    start = image * 2 - 1
    x = prior.schedule.q_sample(start, visits[0], noise)
    for step in range(steps):
        run = partial(_reverse_step, prior, visits[step], visits[step + 1], fresh[step] is not None, tile, overlap,
                      guide)
        if checkpoint and torch.is_grad_enabled() and x.requires_grad:
            x = torch_checkpoint(run, x, start, noise, fresh[step], use_reentrant=False, preserve_rng_state=False)
        else:
            x = run(x, start, noise, fresh[step])
    out = (x.clamp(-1, 1) + 1) / 2
    if per_image and min(values) == 0:  # t* = 0 leaves that image untouched
        out = torch.where(torch.tensor(values, device=image.device).reshape(-1, 1, 1, 1) == 0, image, out)
    return out


def _t_star(text: str) -> int | None:
    """A t* setting: an integer timestep, or auto (None: chosen on the run's clean images)."""
    return None if text.strip() == "auto" else int(text)


CHECKPOINT_AUTO_STEPS = 4  # checkpoint=auto keeps one step's activations from this many reverse steps on


class PurifyDefense(DefenseComponent):
    """`purify[:ARGS]`: diffusion purification of the attacked input before restoration.

    ARGS: comma-separated key=value (`settings`) — t (alias t_star; default 30), steps (2), sampler (ddim|ddpm),
    tile, overlap (16), index (udcbench|diffpure: how t* indexes the schedule, see the module docstring; default
    udcbench), prior (a prior file, diffusers folder or guided-diffusion .pt; default the bundled one), config
    (the architecture of a guided-diffusion .pt: adm-256-uncond, or adm:flag=value,…), guide (mse | adv |
    adv:FILE: guided reverse steps, `guide.py`) with scale (≥ 0), checkpoint (auto|on|off: recompute each
    reverse step in the backward pass; auto from 4 steps on), precision (auto|fp32|fp16: fp16 runs a
    guided-diffusion prior in half precision; auto = fp16 on CUDA) — e.g. "t=30", "t=30,steps=4,sampler=ddpm",
    "t=100,index=diffpure", "guide=mse,scale=0.4"; a bare number is t.
    "auto" (or t=auto) leaves t_star None for `ready` to choose on the run's clean images
    (`noise_level.select_t_star`), tuned by loss= (max clean PSNR loss, dB; 1), n= (calibration images; 4),
    eps= (reference PGD budget in /255; 8).
    `prior` is the DiffusionPrior (the registered factory loads the bundled one; prior=PATH loads that one).
    """

    name = "purify"
    randomized = True  # forward noise and DDPM noise: adaptive attacks average over draws (EOT)
    settings = {
        "t": Setting(DEFAULT_T_STAR, _t_star, "an integer timestep or auto", aliases=("t_star",)),
        "steps": Setting(DEFAULT_STEPS, int, "an integer"),
        "sampler": Setting("ddim", word, "a sampler name"),
        "tile": Setting(None, int, "an integer", example="tile=64"),
        "overlap": Setting(DEFAULT_OVERLAP, int, "an integer"),
        "index": Setting(DEFAULT_INDEX, word, "an index convention"),
        **{key: Setting(default, float, "a number", example=f"auto,{key}={default:g}")
           for key, default in AUTO_KEYS.items()},
        "prior": Setting(None, str, "a prior file or diffusers folder", example="prior=prior.safetensors"),
        "config": Setting(None, word, "an ADM config: adm-256-uncond or adm:flag=value,…",
                          example="prior=256x256_diffusion_uncond.pt,config=adm-256-uncond"),
        "guide": Setting(None, parse_guide, "mse, adv or adv:FILE (a udcbench train-guide file)",
                         example="guide=mse,scale=0.4"),
        "scale": Setting(None, parse_scale, "a guidance scale ≥ 0", example="guide=mse,scale=0.4"),
        "checkpoint": Setting("auto", choice("auto", "on", "off"), "auto, on or off", example="checkpoint=on"),
        "precision": Setting("auto", choice("auto", "fp32", "fp16"), "auto, fp32 or fp16", example="precision=fp32"),
    }
    shorthand = "t"

    @classmethod
    def parse(cls, argument: str | None) -> dict:
        """The settings, with `config=adm:f=v,f=v,…` (or `config=NAME:f=v,…`) read as one setting."""
        if argument is not None and re.search(r"config\s*=\s*[\w-]+:", argument):
            from udcbench.defenses.adm import group_adm_flags

            argument = group_adm_flags(argument)
        return super().parse(argument)

    def __init__(self, argument: str | None = None, prior: DiffusionPrior | None = None,
                 t_star: int | None = DEFAULT_T_STAR, steps: int = DEFAULT_STEPS, sampler: str = "ddim",
                 tile: int | None = None, overlap: int = DEFAULT_OVERLAP, index: str = DEFAULT_INDEX):
        super().__init__(argument)
        given = self.parse(argument)
        self.auto: dict[str, float] = {key: value for key, value in given.items() if key in AUTO_KEYS}
        self.guide_kind, self.scale = given.get("guide"), given.get("scale")
        self.checkpoint, self.precision = given.get("checkpoint", "auto"), given.get("precision", "auto")
        self._check_guide()
        if prior is None and given.get("prior") is not None:
            from udcbench.defenses.adm_checkpoint import load_purify_prior

            prior = load_purify_prior(given["prior"], given.get("config"))
        elif given.get("config") is not None:
            raise SpecError("purify config= describes the guided-diffusion checkpoint that prior= names; add "
                            "prior=FILE.pt (e.g. purify:prior=256x256_diffusion_uncond.pt,config=adm-256-uncond)")
        self.prior, self.t_star, self.steps = prior, given.get("t", t_star), given.get("steps", steps)
        self.sampler, self.tile = given.get("sampler", sampler), given.get("tile", tile)
        self.overlap, self.index = given.get("overlap", overlap), given.get("index", index)
        self._check()
        self.guide = self._make_guide()
        self.chosen: dict | None = None  # set by select_t_star (purify:auto): the calibration it ran

    def _check_guide(self) -> None:
        if self.scale is not None and self.guide_kind is None:
            raise SpecError(f"purify scale={self.scale:g} sets the guidance scale; add guide=mse or guide=adv "
                            "(purify:guide=mse,scale=0.4) or drop scale")
        if self.guide_kind is not None and self.scale is None:
            self.scale = DEFAULT_SCALE[self.guide_kind.split(":")[0]]

    def _make_guide(self):
        """The guide object `purify` runs (None without guide=); loads guide=adv's network."""
        from udcbench.defenses.guide import GUIDE_FILE, guide_digest, load_guide, make_guide

        if self.guide_kind is None:
            return None
        net = None
        if self.guide_kind.startswith("adv"):
            from udcbench.models import WEIGHTS_DIR

            path = self.guide_kind[4:] or WEIGHTS_DIR / GUIDE_FILE
            net = load_guide(path)
        return make_guide(self.guide_kind.split(":")[0], self.scale, net, "" if net is None else guide_digest(net))
    def _check(self) -> None:
        """SpecError for settings that cannot purify with this prior."""
        prior = self.prior
        check_settings(0 if self.t_star is None else self.t_star, self.steps, self.sampler,
                       None if prior is None else prior.schedule.T, self.index)
        if self.auto and self.t_star is not None:
            raise SpecError(f"purify {', '.join(self.auto)} set the automatic t* choice; add auto "
                            "(purify:auto,loss=1) or drop them")
        if prior is not None and self.tile is not None and (self.tile < prior.multiple or self.tile % prior.multiple):
            raise SpecError(f"purify tile {self.tile} must be a positive multiple of {prior.multiple} for this prior; "
                            f"e.g. tile={prior.size}")
        if self.precision == "fp16" and prior is not None and not hasattr(prior.unet, "half_precision"):
            raise SpecError("purify precision=fp16 runs guided-diffusion (ADM) priors in half precision; this prior "
                            "has no half-precision mode — drop precision=fp16")
        if self.overlap < 0 or (self.tile is not None and self.tile <= self.overlap):
            raise SpecError(f"purify overlap {self.overlap} must be ≥ 0 and below tile {self.tile}; e.g. overlap=16")

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.t_star is None:
            raise SpecError("purify:auto is resolved by the runner; outside it give t* explicitly, e.g. purify:t=30")
        if self.prior is None:
            raise SpecError("purify has no diffusion prior; pass prior=load_prior(path) (or train_prior(...))")
        checkpointing = self.checkpoint == "on" or (self.checkpoint == "auto" and self.steps >= CHECKPOINT_AUTO_STEPS)
        return purify(self.prior, image, self.t_star, self.steps, self.sampler, generator, self.tile, self.overlap,
                      self.index, self.guide, checkpointing)

    def _half(self, device) -> bool:
        """Whether the prior runs in float16 on `device`: precision=fp16, or auto on CUDA, for a prior that has a
        half-precision mode (guided-diffusion's)."""
        able = self.prior is not None and hasattr(self.prior.unet, "half_precision")
        return able and (self.precision == "fp16" or (self.precision == "auto" and torch.device(device).type == "cuda"))

    def networks(self) -> list[torch.nn.Module]:
        """The prior's noise-prediction network (a PriorUNet, or the diffusers UNet's adapter): one pass per
        `predict_noise` call."""
        return [] if self.prior is None else [self.prior.unet]

    def ready(self, model, dataset, seed: int, device, defense) -> None:
        """The prior to `device`; for purify:auto (t_star None), t* chosen on the run's clean images
        (`noise_level.select_t_star`, recorded in `chosen`). Once chosen, calling again changes nothing."""
        if self.prior is not None:
            prior_digest(self.prior)  # of the stored weights, before any precision change
            self.prior.to(device)
            if self._half(device):
                self.prior.unet.half_precision()
        if self.guide is not None and hasattr(self.guide, "net"):
            self.guide.net.to(device)
        if self.t_star is None:
            noise_level.select_t_star(self, defense, model, dataset, seed, device)

    def record(self, model_name: str) -> dict:
        found = {"t_star": self.t_star, "steps": self.steps, "sampler": self.sampler,
                 "tile": self.tile if self.tile is not None else getattr(self.prior, "size", None),
                 "overlap": self.overlap, "prior": None if self.prior is None else prior_digest(self.prior)}
        if self.index != DEFAULT_INDEX:  # only when set, so default runs keep the hashes of earlier versions
            found["index"] = self.index
        if self.guide is not None:  # only when set, so unguided runs keep their hashes
            found.update(guide=self.guide.kind, scale=self.scale)
            if getattr(self.guide, "digest", ""):
                found["guide_weights"] = self.guide.digest
        if self.chosen is not None:
            found["auto"] = self.chosen
        return found

    @classmethod
    def label(cls, argument: str | None, record: dict | None) -> str:
        """purify:auto shows the t* it chose: 'purify:auto' → 'purify:auto(t*=30)'."""
        text = super().label(argument, record)
        if record is not None and "auto" in record and argument is not None and "auto" in argument:
            return f"{text}(t*={record['t_star']})"
        return text


def prior_digest(prior: DiffusionPrior) -> str:
    """16 hex digits of SHA-256 over the prior's weights, schedule and prediction type (cached on the prior)."""
    import hashlib
    import json

    if getattr(prior, "_digest", None) is None:
        digest = hashlib.sha256(json.dumps([prior.schedule.config(), prior.prediction_type, prior.size]).encode())
        for name, tensor in sorted(prior.unet.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        prior._digest = digest.hexdigest()[:16]
    return prior._digest


PRIOR_FILE = "prior-udc-mini.safetensors"  # the bundled image prior (udcbench/models/weights/)


def _registered_purify(argument: str | None = None) -> PurifyDefense:
    """The registered `purify`: with the prior prior=PATH names, else the bundled one."""
    from udcbench.defenses.diffusion import load_prior
    from udcbench.models import WEIGHTS_DIR

    if PurifyDefense.parse(argument).get("prior") is not None:
        return PurifyDefense(argument)
    path = WEIGHTS_DIR / PRIOR_FILE
    if not path.is_file():
        raise SpecError(f"no diffusion prior is bundled ({PRIOR_FILE}); pass purify:prior=PATH (a udcbench "
                        "prior .safetensors or a diffusers DDPM folder)")
    return PurifyDefense(argument, prior=load_prior(path))


register_defense("purify", kind="transform", randomized=True,
                 description="diffusion purification (DiffPure): noise to t*, DDIM/DDPM back to t=0 with an image "
                             "prior; purify:t=30,steps=2,sampler=ddim,prior=PATH; purify:auto picks t* on clean "
                             "data; index=diffpure counts t* as DiffPure's code (schedule index t*-1); "
                             "guide=mse|adv[:FILE],scale=0.4 guides the reverse steps toward the input; "
                             "prior=FILE.pt,config=adm-256-uncond loads a guided-diffusion checkpoint; "
                             "checkpoint=auto|on|off bounds adaptive-attack memory",
                 extra="diffusers", extra_for="for prior=DIR",
                 component=PurifyDefense)(_registered_purify)
