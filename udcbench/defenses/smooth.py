"""`smooth`: randomized median smoothing of the whole defended system, with certified PSNR bounds.

The smoothed system answers y with the per-pixel median of n outputs of the base system f on noisy copies,

    g(y) = median_i f(y + σ·gᵢ),     gᵢ ~ N(0, I) drawn from the run's seeded generator, one per copy,

where f is everything else of the defense (`purify+smooth`: purification, then the model; `ft+smooth`: the
fine-tuned model) and the model — smoothing wraps the whole system (`smooth` must be last in the spec), so the
noise is added to the input the attacker controls and the certificate (certify.py) speaks about that input.
Noisy copies are clamped to [0, 1] before f (part of f, so the certificate holds), and f's outputs are clamped
to [0, 1] (so unbounded percentiles become the output range).

Settings (`smooth:key=value,…`):
  sigma     the noise level σ on [0, 1] images (0.25), or auto: chosen on clean images (sigma_selection.py)
  n         noisy copies per evaluated image (128): the median's and the certificate's samples
  alpha     the certificate's error probability: it holds with confidence 1 − α jointly over all pixels (0.001)
  radius    sigma=auto optimises the certified PSNR at this L2 radius, and runs without --radius certify at it
  loss      sigma=auto: the largest clean PSNR loss (dB) allowed (3); images: its calibration images (2)
  batch     noisy copies per forward pass (16); attack_n: copies per evaluation an adaptive attack
            differentiates (8: the median of 8, with fresh noise at every call — EOT averages calls on top)
  denoise   none, or prior: diffusion-denoised smoothing (Carlini et al., ICLR 2023) — each noisy copy is
            denoised in one step of the diffusion prior at the timestep whose noise level equals σ
            (√((1−ᾱ_t)/ᾱ_t) = 2σ on the prior's [−1, 1] scale), unclamped, before f; prior=PATH and config=
            choose the prior as for purify (default the bundled one)
  surrogate a distilled surrogate (`udcbench distill`) replacing the model (DUCD, Li et al. 2024): the
            smoothed surrogate is deployed in place of a black-box target, and the certificate is the smoothed
            surrogate's, not the target's; `surrogate=bundled` is the bundled distillation of uformer-nano

    udcbench run --model uformer --attack pgd-l2 --defense smooth:sigma=0.25,n=128 --radius 0.1,0.25
"""

from __future__ import annotations

import math

import torch

from udcbench.defenses.base import DefenseComponent, Setting, choice, integer, positive_number, word
from udcbench.errors import SpecError
from udcbench.registry import register_defense

DEFAULT_SIGMA, DEFAULT_N, DEFAULT_ALPHA = 0.25, 128, 0.001


def _sigma(text: str) -> float | None:
    """sigma: a finite number > 0, or auto (None: chosen on clean images)."""
    return None if text.strip() == "auto" else positive_number(text)


def _alpha(text: str) -> float:
    value = float(text.strip())
    if not 0.0 < value < 1.0:
        raise ValueError(text)
    return value


def _radius(text: str) -> float:
    value = float(text.strip())
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(text)
    return value


def _noise(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def _repeat_bound(model, copies: int):
    """`model` for `copies` noisy copies of its batch stacked copy-major: per-image inputs bound for a batch of
    B > 1 images are repeated to match (a single image's broadcast anyway)."""
    from udcbench.models.base import BoundModel

    if not isinstance(model, BoundModel) or copies == 1:
        return model
    extras = {k: v.repeat(copies, *[1] * (v.dim() - 1)) if v.shape[0] > 1 else v for k, v in model.extras.items()}
    return model.model.bind(**extras)


class SmoothDefense(DefenseComponent):
    """`smooth[:ARGS]`: median smoothing of the defended system (module docstring)."""

    name = "smooth"
    randomized = True
    smooths = True  # Defense.restore hands the whole system to `smooth`
    settings = {
        "sigma": Setting(DEFAULT_SIGMA, _sigma, "a noise level > 0 or auto", example="sigma=0.25"),
        "n": Setting(DEFAULT_N, integer(1), "an integer ≥ 1", example="n=128"),
        "alpha": Setting(DEFAULT_ALPHA, _alpha, "a probability in (0, 1)", example="alpha=0.001"),
        "radius": Setting(None, _radius, "an L2 radius ≥ 0", example="sigma=auto,radius=0.25"),
        "loss": Setting(3.0, _radius, "a PSNR loss ≥ 0 dB", example="sigma=auto,radius=0.25,loss=3"),
        "images": Setting(2, integer(1), "an integer ≥ 1", example="sigma=auto,radius=0.25,images=4"),
        "batch": Setting(16, integer(1), "an integer ≥ 1", example="batch=16"),
        "attack_n": Setting(8, integer(1), "an integer ≥ 1", example="attack_n=8"),
        "denoise": Setting("none", choice("none", "prior"), "none or prior", example="denoise=prior"),
        "prior": Setting(None, str, "a prior file or diffusers folder", example="denoise=prior,prior=prior.safetensors"),
        "config": Setting(None, word, "an ADM config (as purify's)", example="denoise=prior,prior=m.pt,config=adm-256-uncond"),
        "surrogate": Setting(None, str, "a distilled surrogate file or bundled", example="surrogate=bundled"),
    }
    shorthand = "sigma"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        given = self.configure(argument)
        self.sigma, self.n, self.alpha = given["sigma"], given["n"], given["alpha"]
        self.radius, self.loss, self.images = given["radius"], given["loss"], given["images"]
        self.batch, self.attack_n, self.denoise = given["batch"], given["attack_n"], given["denoise"]
        self.auto = self.sigma is None
        if self.auto and self.radius is None:
            raise SpecError("smooth:sigma=auto picks σ for a certified radius; add radius= (e.g. "
                            "smooth:sigma=auto,radius=0.25)")
        explicit = self.parse(argument)
        if not self.auto and ({"loss", "images"} & set(explicit)):
            raise SpecError("smooth loss= and images= tune sigma=auto; add sigma=auto or drop them")
        if self.denoise != "prior" and ({"prior", "config"} & set(explicit)):
            raise SpecError("smooth prior=/config= choose the denoising prior; add denoise=prior or drop them")
        self.prior = self._load_prior(given["prior"], given["config"]) if self.denoise == "prior" else None
        self.surrogate_path = given["surrogate"]
        self.surrogate = self._load_surrogate(self.surrogate_path) if self.surrogate_path else None
        self.chosen: dict | None = None  # sigma=auto: the calibration (sigma_selection.py)

    @staticmethod
    def _load_prior(path: str | None, config: str | None):
        from udcbench.defenses.adm_checkpoint import load_purify_prior
        from udcbench.defenses.diffusion import load_prior
        from udcbench.defenses.purify import PRIOR_FILE
        from udcbench.models import WEIGHTS_DIR

        if path is not None:
            return load_purify_prior(path, config)
        if config is not None:
            raise SpecError("smooth config= describes the guided-diffusion checkpoint prior= names; add prior=FILE.pt")
        bundled = WEIGHTS_DIR / PRIOR_FILE
        if not bundled.is_file():
            raise SpecError(f"no diffusion prior is bundled ({PRIOR_FILE}); pass smooth:denoise=prior,prior=PATH")
        return load_prior(bundled)

    @staticmethod
    def _load_surrogate(path: str):
        from udcbench.models import WEIGHTS_DIR
        from udcbench.models.distill import SURROGATE_FILE, load_surrogate

        return load_surrogate(WEIGHTS_DIR / SURROGATE_FILE if path == "bundled" else path)

    # --- the smoothed system -------------------------------------------------------------------------------------

    def denoise_step(self, noisy: torch.Tensor) -> torch.Tensor:
        """One step of the prior from the timestep whose noise level is 2σ in [−1, 1] units (Carlini et al.)."""
        from udcbench.defenses.purify import DEFAULT_OVERLAP
        from udcbench.defenses.tiling import predict_tiled

        t = self.timestep()
        alpha_bar = self.prior.schedule.alpha_bar(t, noisy)
        x_t = alpha_bar.sqrt() * (noisy * 2 - 1)
        epsilon = predict_tiled(self.prior, x_t, t, self.prior.size, DEFAULT_OVERLAP)[:, :3]
        x0 = ((x_t - (1 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()).clamp(-1, 1)
        return (x0 + 1) / 2

    def timestep(self) -> int:
        """The schedule index whose √((1 − ᾱ_t)/ᾱ_t) is closest to 2σ."""
        bars = self.prior.schedule.alphas_cumprod
        levels = ((1 - bars) / bars).sqrt()
        return int((levels - 2 * self.sigma).abs().argmin())

    def _outputs(self, base, image: torch.Tensor, count: int, generator) -> list[torch.Tensor]:
        """f(y + σ·gᵢ) for i < count, in chunks of `batch` copies, each (k, B, C, H, W) clamped to [0, 1]. Every
        copy's noise is its own draw, in order, so the chunking never changes a value."""
        outputs = []
        for start in range(0, count, self.batch):
            copies = min(self.batch, count - start)
            noise = torch.stack([_noise(image.shape, generator, image) for _ in range(copies)])
            noisy = image.unsqueeze(0) + self.sigma * noise
            noisy = self.denoise_step(noisy.flatten(0, 1)) if self.prior is not None else noisy.clamp(0, 1).flatten(0, 1)
            out = base(noisy, copies).float().clamp(0, 1)
            outputs.append(out.reshape(copies, *image.shape))
        return outputs

    def samples(self, base, image: torch.Tensor, generator) -> torch.Tensor:
        """The n outputs, sorted per pixel: (n, B, C, H, W)."""
        if self.sigma is None:
            raise SpecError("smooth:sigma=auto is resolved by the runner; outside it give sigma, e.g. smooth:sigma=0.25")
        return torch.cat(self._outputs(base, image, self.n, generator)).sort(dim=0).values

    def smooth(self, model, transform, image: torch.Tensor, generator, differentiable: bool = False,
               keep: bool = False):
        """The smoothed output of `model(transform(·))` at `image`: the median of n copies (keep: also the sorted
        samples, for certificates), or for an attacker's gradient (differentiable) the median of attack_n copies."""
        def base(noisy, copies):
            return _repeat_bound(model, copies)(transform(noisy, generator))

        if differentiable:
            return torch.cat(self._outputs(base, image, self.attack_n, generator)).median(dim=0).values
        with torch.no_grad():
            sorted_samples = self.samples(base, image, generator)
        median = sorted_samples[(self.n - 1) // 2]
        return (median, sorted_samples) if keep else median

    # --- defense hooks -------------------------------------------------------------------------------------------

    def swap_weights(self, model):
        """The distilled surrogate in place of the model (surrogate=), else the model."""
        if self.surrogate is None:
            return model
        device = next(iter(model.parameters()), torch.empty(0)).device
        return self.surrogate.to(device)

    def networks(self) -> list[torch.nn.Module]:
        return [] if self.prior is None else [self.prior.unet]

    def ready(self, model, dataset, seed: int, device, defense) -> None:
        super().ready(model, dataset, seed, device, defense)
        if self.surrogate is not None:
            self.surrogate.to(device)
        if self.sigma is None:
            from udcbench.defenses.sigma_selection import select_sigma

            select_sigma(self, defense, model, dataset, seed, device)

    def record(self, model_name: str) -> dict:
        from udcbench.spec import file_digest

        found = {"sigma": self.sigma, "n": self.n, "alpha": self.alpha, "batch": self.batch,
                 "attack_n": self.attack_n, "denoise": self.denoise}
        if self.prior is not None:
            from udcbench.defenses.purify import prior_digest

            found.update(prior=prior_digest(self.prior), t=self.timestep() if self.sigma is not None else None)
        if self.surrogate is not None:
            from udcbench.models import WEIGHTS_DIR
            from udcbench.models.distill import SURROGATE_FILE

            path = WEIGHTS_DIR / SURROGATE_FILE if self.surrogate_path == "bundled" else self.surrogate_path
            found["surrogate"] = "file:" + file_digest(path)
            found["surrogate_of"] = self.surrogate.info.extra.get("surrogate", {}).get("target")
        if self.auto:
            found["radius"] = self.radius
            if self.chosen is not None:
                found["auto"] = self.chosen
        return found

    @classmethod
    def label(cls, argument: str | None, record: dict | None) -> str:
        """sigma=auto shows the σ it chose: 'smooth:sigma=auto,radius=0.25(σ=0.25)'."""
        text = super().label(argument, record)
        if record is not None and "auto" in record:
            return f"{text}(σ={record['sigma']:g})"
        return text


register_defense("smooth", kind="smoothing", randomized=True,
                 description="randomized median smoothing with certified PSNR (--radius): smooth:sigma=0.25,n=128,"
                             "alpha=0.001; sigma=auto,radius=R picks σ on clean images; denoise=prior adds one "
                             "diffusion denoising step; surrogate=FILE smooths a distilled surrogate (DUCD)",
                 extra="diffusers", extra_for="for prior=DIR",
                 component=SmoothDefense)(SmoothDefense)
