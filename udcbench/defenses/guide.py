"""Guidance for the purification reverse process: `purify:guide=mse` and `purify:guide=adv:FILE`.

Each reverse step of guided purification shifts the noise estimate by the gradient of a distance D between the
current state x_t and the purified input y diffused to the same step (Dhariwal & Nichol's classifier-guidance
form for DDIM, with the distance in place of −log p):

    ε̂ ← ε̂ + s · ∇ₓₜ D(x_t, y_t) / √(1 − ᾱ_t),    y_t = √ᾱ_t · y + √(1 − ᾱ_t) · ε₀

ε₀ is the noise that diffused the input to t*, so the chain stays deterministic given x_t* and D = 0 at the first
step. With the 1/√(1 − ᾱ_t) factor the scale reads directly: for D = ½‖x_t − y_t‖² the estimate becomes
x̂₀ − s·(x̂₀ − y) − s·√((1 − ᾱ_t)/ᾱ_t)·(ε̂ − ε₀) — the fraction s of the way from the prior's estimate toward the
input, up to the noise the prior has not explained (s = 0: plain purification).

- `guide=mse` — GDMP (Wang et al., 2022, "Guided Diffusion Model for Adversarial Purification"): the pixel
  distance D = ½‖x_t − y_t‖². It keeps the input's content, and with it part of the perturbation. GDMP draws
  fresh noise for y_t; udcbench reuses ε₀ (above), which removes that extra noise from the guidance.
- `guide=adv:FILE` — the adversarial guidance of Lin et al. (2024, "Robust Diffusion Models for Adversarial
  Purification"): D = ½‖g(x_t) − g(y_t)‖² between the latent representations of an auxiliary network g,
  trained adversarially so that a perturbation of the input barely moves g(y): the guidance keeps what g
  represents without pulling the perturbation back in. The diffusion model is not retrained. Its gradient is
  used in direction only, at the per-image norm of the pixel guidance ‖x_t − y_t‖, so a scale means the same
  step size for both guides and they compare at equal s. `train_guide` trains g (`udcbench train-guide`);
  `guide=adv` alone uses the bundled guide for udc-mini.

The guidance gradient is part of the computation graph when gradients flow (double backpropagation through g), so
adaptive attacks differentiate through it.

The auxiliary network (`GuideNet`): an encoder of noisy model-space images (3 → c → 2c → 2c channels, two
stride-2 convolutions, GroupNorm, SiLU — smooth, so its second derivatives are not zero) to a latent at 1/4
resolution, and a decoder used only in training. Training (`train_guide`) on random crops of the inputs
purification sees (the dataset's degraded captures), each diffused to a random t ≤ t_max:
    δ* = argmax_{‖δ‖∞ ≤ ε} ‖g(x_t(y + δ)) − g(x_t(y))‖²          (PGD, `attack_steps` steps, random start)
    loss = ‖dec(g(x_t(y))) − y‖² + ‖dec(g(x_t(y + δ*))) − y‖² + λ·‖g(x_t(y + δ*)) − g(x_t(y))‖² / ‖g(x_t(y))‖²
reconstruction keeps the latent informative; the relative latent term makes it robust to δ (TRADES-style).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.errors import CheckpointError, SpecError

FORMAT = "udcbench-guide/1"
GUIDE_FILE = "guide-udc-mini.safetensors"  # the bundled guide (udcbench/models/weights/)


GUIDES = ("mse", "adv")
DEFAULT_SCALE = {"mse": 0.4, "adv": 0.4}  # guidance scales measured on udc-mini (README "Guided purification")


def parse_guide(text: str) -> str:
    """A purify guide= setting: mse, adv (the bundled guide network) or adv:FILE; ValueError otherwise."""
    text = text.strip()
    if text not in GUIDES and not (text.startswith("adv:") and len(text) > 4):
        raise ValueError(text)
    return text


def parse_scale(text: str) -> float:
    """A purify scale= setting: a finite number ≥ 0 (0: no pull toward the input); ValueError otherwise."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(text)
    return value


class GuideNet(nn.Module):
    """The auxiliary network g of adversarial guidance: `latent(x)` for model-space images (B, 3, H, W) in
    [−1, 1] → (B, latent, ⌈H/4⌉, ⌈W/4⌉); `decode(z)` maps back (training only)."""

    def __init__(self, channels: int = 32, latent: int = 32, groups: int = 8):
        super().__init__()
        self.config = {"channels": channels, "latent": latent, "groups": groups}
        wide = 2 * channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, wide, 3, stride=2, padding=1), nn.GroupNorm(groups, wide), nn.SiLU(),
            nn.Conv2d(wide, wide, 3, stride=2, padding=1), nn.GroupNorm(groups, wide), nn.SiLU(),
            nn.Conv2d(wide, latent, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, wide, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(wide, channels, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(channels, 3, 3, padding=1))

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class MSEGuide:
    """guide=mse: D = ½‖x_t − y_t‖², whose gradient is x_t − y_t."""

    kind = "mse"

    def __init__(self, scale: float):
        self.scale = scale

    def gradient(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x - target


class AdversarialGuide:
    """guide=adv: D = ½‖g(x_t) − g(y_t)‖²; its gradient w.r.t. x_t, rescaled per image to the norm of x_t − y_t.
    When gradients flow to the purified input it is a node of the graph (`_Guidance`) whose backward pass
    recomputes g and takes the second derivatives then, so nothing of g is kept between the forward and the
    backward pass (with checkpointing, memory stays at one reverse step)."""

    kind = "adv"

    def __init__(self, net: GuideNet, scale: float, digest: str = ""):
        self.net, self.scale, self.digest = net, scale, digest

    def gradient(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or target.requires_grad):
            return _Guidance.apply(x, target, self.net)
        return _latent_gradient(self.net, x.detach(), target.detach(), create_graph=False).detach()


def _latent_gradient(net: GuideNet, x: torch.Tensor, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """∇ₓ ½‖g(x) − g(target)‖² in direction, at the per-image norm of x − target (the pixel guidance's), so the two
    guides compare at equal scale. Computed with its own graph: even inside a checkpointed reverse step, g's saved
    tensors are kept as they are (its inner backward would otherwise unpack them mid-forward and recompute)."""
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_kept, _kept):
        point = x if x.requires_grad else x.detach().requires_grad_()
        distance = 0.5 * (net.latent(point) - net.latent(target)).square().sum()
        (grad,) = torch.autograd.grad(distance, point, create_graph=create_graph)
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad * ((point - target).flatten(1).norm(dim=1) / norms).reshape(-1, 1, 1, 1)


class _Guidance(torch.autograd.Function):
    """The adversarial guidance as one graph node: forward keeps only x and the target; backward recomputes
    `_latent_gradient` with its graph and returns the vector–Hessian products for both."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, target: torch.Tensor, net: GuideNet) -> torch.Tensor:
        ctx.save_for_backward(x, target)
        ctx.net = net
        return _latent_gradient(net, x.detach(), target.detach(), create_graph=False).detach()

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        x, target = ctx.saved_tensors
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_kept, _kept):
            x, target = x.detach().requires_grad_(), target.detach().requires_grad_()
            grad = _latent_gradient(ctx.net, x, target, create_graph=True)
            along_x, along_target = torch.autograd.grad(grad, (x, target), upstream)
        return along_x, along_target, None


def _kept(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def make_guide(kind: str | None, scale: float | None, net: GuideNet | None = None, digest: str = ""):
    """The guide object purify runs: None (no guidance), MSEGuide or AdversarialGuide (needs `net`)."""
    if kind is None:
        return None
    if kind == "mse":
        return MSEGuide(scale)
    return AdversarialGuide(net, scale, digest)


# --- files ----------------------------------------------------------------------------------------------------

def save_guide(net: GuideNet, path: str | Path, meta: dict[str, str] | None = None) -> None:
    """Write a GuideNet to one .safetensors file; its configuration and `meta` go into the header."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise SpecError(f"a guide is saved as safetensors; name the file *.safetensors, not {path.name}")
    header = {**{k: str(v) for k, v in (meta or {}).items()}, "format": FORMAT, "config": json.dumps(net.config)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=header)
    tmp.replace(path)


def load_guide(path: str | Path) -> GuideNet:
    """A GuideNet from a `save_guide` file (eval mode, frozen); CheckpointError for any other file."""
    from udcbench.models.checkpoints import load_into, read_state_dict

    path = Path(path)
    fix = "train one with udcbench train-guide --data D --out G.safetensors (guide=adv alone uses the bundled one)"
    if not path.is_file():
        raise CheckpointError(f"guide file {path} does not exist; {fix}")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a udcbench guide (guides are .safetensors files); {fix}")
    state, header = read_state_dict(path)
    if header.get("format") != FORMAT:
        found = header.get("format") or "no format"
        raise CheckpointError(f"{path} is not a udcbench guide network (its header says {found}, not {FORMAT}); {fix}")
    try:
        net = GuideNet(**json.loads(header["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has a damaged guide header ({error}); {fix}") from None
    load_into(net, state, str(path))
    net.meta = {k: v for k, v in header.items() if k not in ("format", "config")}
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def guide_digest(net: GuideNet) -> str:
    """16 hex digits of SHA-256 over the guide's weights (what a run records)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(net.config, sort_keys=True).encode())
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --- training -------------------------------------------------------------------------------------------------

def _worst_shift(net: GuideNet, x0, alpha_bar, noise, eps: float, steps: int, generator) -> torch.Tensor:
    """PGD (L∞ ε in [0, 1] units, random start) maximising ‖g(x_t(x0 + δ)) − g(x_t(x0))‖²; returns x0 + δ*."""
    reference = net.latent(alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise).detach()
    radius = 2 * eps  # model space is 2× the [0, 1] range
    delta = (torch.rand(x0.shape, generator=generator) * 2 - 1) * radius
    for _ in range(steps):
        delta = delta.detach().requires_grad_()
        moved = ((x0 + delta).clamp(-1, 1) * alpha_bar.sqrt() + (1 - alpha_bar).sqrt() * noise)
        (grad,) = torch.autograd.grad((net.latent(moved) - reference).square().sum(), delta)
        delta = (delta + 2.5 * radius / steps * grad.sign()).clamp(-radius, radius)
    return (x0 + delta.detach()).clamp(-1, 1)


def train_guide(images: list[torch.Tensor], steps: int = 400, batch_size: int = 16, crop: int = 64,
                lr: float = 1e-3, seed: int = 0, eps: float = 8 / 255, attack_steps: int = 3, t_max: int = 100,
                weight: float = 1.0, schedule=None,
                progress: Callable[[int, float], None] | None = None) -> GuideNet:
    """Train a GuideNet adversarially (module docstring) on (3, H, W) images in [0, 1]; one `seed` drives the
    weights, crops, timesteps, noise and PGD starts. Adam with a cosine learning rate; eval-mode net returned."""
    from udcbench.defenses.diffusion import Schedule
    from udcbench.defenses.prior_training import random_crops

    if steps < 1 or batch_size < 1 or attack_steps < 1 or not 0 < eps <= 1 or t_max < 0:
        raise SpecError(f"train_guide needs steps, batch_size, attack_steps ≥ 1, 0 < eps ≤ 1, t_max ≥ 0 (got {steps}, "
                        f"{batch_size}, {attack_steps}, {eps}, {t_max})")
    smallest = min(min(x.shape[-2:]) for x in images) if images else 0
    if smallest < crop or crop % 4:
        raise SpecError(f"crop {crop} must be a multiple of 4 no larger than the smallest image ({smallest} px)")
    schedule = schedule or Schedule()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = GuideNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    started, loss = time.time(), torch.zeros(())
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x0 = random_crops(images, batch_size, crop, generator) * 2 - 1
        t = torch.randint(min(t_max, schedule.T - 1) + 1, (batch_size,), generator=generator)
        alpha_bar = schedule.alpha_bar(t, x0)
        noise = torch.randn(x0.shape, generator=generator)
        shifted = _worst_shift(net, x0, alpha_bar, noise, eps, attack_steps, generator)
        clean = net.latent(alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise)
        moved = net.latent(alpha_bar.sqrt() * shifted + (1 - alpha_bar).sqrt() * noise)
        robust = (moved - clean).square().mean() / clean.detach().square().mean().clamp_min(1e-8)
        loss = F.mse_loss(net.decode(clean), x0) + F.mse_loss(net.decode(moved), x0) + weight * robust
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        if progress is not None:
            progress(step + 1, loss.item())
    net.meta = {"steps": str(steps), "batch_size": str(batch_size), "crop": str(crop), "lr": str(lr),
                "seed": str(seed), "eps": f"{eps:.6g}", "attack_steps": str(attack_steps), "t_max": str(t_max),
                "weight": str(weight), "final_loss": f"{loss.item():.5f}",
                "train_seconds": f"{time.time() - started:.0f}", "torch": torch.__version__}
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net
