"""Training the small image prior `purify` uses: ε-prediction (Ho et al. 2020, "simple" loss) on random crops
of clean images, Adam with a cosine learning rate, gradient clipping and an EMA of the weights
(`udcbench train-prior`).

    prior = train_prior(clean_images, steps=200, seed=0); save_prior(prior, "prior.safetensors")
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch.nn import functional as F

from udcbench.defenses.diffusion import DiffusionPrior, PriorUNet, Schedule
from udcbench.errors import SpecError


def random_crops(data: list[torch.Tensor], count: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random crop × crop patches of (3, H, W) images with random horizontal and vertical flips, stacked;
    per patch the draws are: image, top, left, the two flips (the order every trainer here relies on)."""
    batch = []
    for _ in range(count):
        image = data[int(torch.randint(len(data), (1,), generator=generator))]
        top = int(torch.randint(image.shape[-2] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[-1] - crop + 1, (1,), generator=generator))
        patch = image[:, top:top + crop, left:left + crop]
        flips = torch.randint(2, (2,), generator=generator)
        patch = patch.flip(-1) if flips[0] else patch
        batch.append(patch.flip(-2) if flips[1] else patch)
    return torch.stack(batch)


def _clean_images(images) -> list[torch.Tensor]:
    """(3, H, W) tensors in [0, 1] from tensors or dataset samples (their ground truth `.gt`)."""
    found = [item if isinstance(item, torch.Tensor) else getattr(item, "gt", None) for item in images]
    if not found or not all(isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[0] == 3 for x in found):
        raise SpecError("train_prior needs a non-empty list of (3, H, W) tensors in [0, 1] or a dataset of samples")
    return [x.float() for x in found]


def train_prior(images, steps: int = 200, batch_size: int = 24, crop: int = 64, lr: float = 2e-4, seed: int = 0,
                ema: float = 0.999, clip: float = 1.0, unet: dict | None = None, schedule: Schedule | None = None,
                progress: Callable[[int, float], None] | None = None) -> DiffusionPrior:
    """Train a PriorUNet (`unet`: its keyword arguments) on random `crop` crops of clean images, with flips.

    Loss: ‖ε − ε̂(sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε, t)‖², t uniform over the schedule (Ho et al. 2020, "simple").
    Adam, cosine learning rate from `lr`, gradient-norm clipping at `clip`, EMA of the weights with decay `ema`
    (warmed up as min(ema, (1+step)/(10+step))); the EMA model is returned. One `seed` drives the initial
    weights, crops, flips, timesteps and noise, so a run is reproducible on the same CPU platform.
    `progress(step, loss)` is called after every step.
    """
    if steps < 1 or batch_size < 1 or not 0 <= ema < 1:
        raise SpecError(f"train_prior needs steps ≥ 1, batch_size ≥ 1 and 0 ≤ ema < 1 (got {steps}, {batch_size}, "
                        f"{ema})")
    data = _clean_images(images)
    smallest = min(min(x.shape[-2:]) for x in data)
    if smallest < crop:
        raise SpecError(f"crop {crop} exceeds the smallest training image ({smallest} px); lower crop")
    schedule = schedule or Schedule()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PriorUNet(**(unet or {}))
    if crop % net.multiple:
        raise SpecError(f"crop {crop} must be a multiple of {net.multiple} for this UNet")
    average = copy.deepcopy(net).eval()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    started, loss = time.time(), torch.zeros(())
    net.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x0 = random_crops(data, batch_size, crop, generator) * 2 - 1
        t = torch.randint(schedule.T, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = F.mse_loss(net(schedule.q_sample(x0, t, noise), t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        with torch.no_grad():
            decay = min(ema, (1 + step) / (10 + step))
            for target, source in zip(average.parameters(), net.parameters()):
                target.mul_(decay).add_(source, alpha=1 - decay)
        if progress is not None:
            progress(step + 1, loss.item())
    meta = {"steps": str(steps), "batch_size": str(batch_size), "crop": str(crop), "lr": str(lr), "seed": str(seed),
            "ema": str(ema), "final_loss": f"{loss.item():.5f}", "train_seconds": f"{time.time() - started:.0f}",
            "torch": torch.__version__}
    prior = DiffusionPrior(average, schedule, size=crop, meta=meta).eval()
    for parameter in prior.parameters():
        parameter.requires_grad_(False)
    return prior
