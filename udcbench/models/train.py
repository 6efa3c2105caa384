"""Training the small bundled restoration models on a dataset's train split.

Reproducible: one seed drives initialisation, crop positions, flips and batch order (CPU, 2 threads; the
same command on the same platform gives the same weights). The recipe: random crops with horizontal/vertical
flips, L1 loss on the wrapped model's [0,1] output (so every network trains through its own input contract), Adam with a cosine learning-rate schedule and gradient-norm clipping, and an exponential
moving average (EMA) of the weights, which is what is saved. The command, the seed and the final test PSNR
are written into the safetensors header.

    udcbench train --model uformer-nano --data udc-mini --steps 1500 --seed 0 \
        --out udcbench/models/weights/uformer-nano.safetensors
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from udcbench.data import load_dataset
from udcbench.errors import SpecError
from udcbench.metrics import psnr


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: str = "udc-mini"
    steps: int = 1500
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    ema: float = 0.995
    clip: float = 0.5
    seed: int = 0


def _random_batch(samples, config: TrainConfig, generator: torch.Generator, extra_names=()):
    inputs, targets, extras = [], [], {name: [] for name in extra_names}
    for _ in range(config.batch_size):
        sample = samples[int(torch.randint(len(samples), (1,), generator=generator))]
        _, height, width = sample.degraded.shape
        top = int(torch.randint(height - config.crop + 1, (1,), generator=generator))
        left = int(torch.randint(width - config.crop + 1, (1,), generator=generator))
        pair = torch.stack([sample.degraded, sample.gt])[..., top:top + config.crop, left:left + config.crop]
        flips = torch.randint(2, (2,), generator=generator)
        if flips[0]:
            pair = pair.flip(-1)
        if flips[1]:
            pair = pair.flip(-2)
        inputs.append(pair[0])
        targets.append(pair[1])
        for name in extra_names:
            extras[name].append(sample.extras[name])
    return torch.stack(inputs), torch.stack(targets), {k: torch.stack(v) for k, v in extras.items()}


def evaluate(model, dataset) -> tuple[float, float]:
    """Mean PSNR of the degraded inputs and of the model's outputs over a dataset."""
    before, after = [], []
    with torch.no_grad():
        for sample in dataset:
            degraded, gt = sample.degraded[None], sample.gt[None]
            extras = {k: v[None] for k, v in sample.extras.items() if k in model.contract.extra_inputs}
            before.append(psnr(degraded, gt).item())
            after.append(psnr(model(degraded, **extras), gt).item())
    return sum(before) / len(before), sum(after) / len(after)


def check_training(steps: int, batch_size: int, crop: int, lr: float, smallest_crop: int = 8) -> None:
    """The options every training command shares (train, finetune, train-prior, train-guide), before any model or
    data is loaded: whole positive counts, a crop a network can take, a finite positive learning rate."""
    for flag, value, least, example in (("--steps", steps, 1, 300), ("--batch-size", batch_size, 1, 8),
                                        ("--crop", crop, smallest_crop, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SpecError(f"{flag} must be a whole number ≥ {least}, got {value}; e.g. {flag} {example}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise SpecError(f"--lr must be a finite positive number, got {lr}; e.g. --lr 1e-3")


def train(config: TrainConfig, out: Path, command: str = "",
          progress: Callable[[int, float], None] | None = None) -> dict:
    """Train `config.model` from a seeded random init; save the EMA weights to `out` (safetensors)."""
    from udcbench.models import load_model

    check_training(config.steps, config.batch_size, config.crop, config.lr)
    model = load_model(config.model, weights="random", seed=config.seed)
    net = model.net
    if not any(True for _ in net.parameters()):
        raise SpecError(f"{model.info.name} has no parameters to train (it is training-free); train a network "
                        "(`udcbench list models`)")
    samples = list(load_dataset(config.data, split="train"))
    smallest = min(min(s.degraded.shape[-2:]) for s in samples)
    if smallest < config.crop:
        raise SpecError(f"--crop {config.crop} exceeds the smallest train image ({smallest} px); lower it")
    for parameter in net.parameters():
        parameter.requires_grad_(True)
    net.train()
    ema = copy.deepcopy(net).eval()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.time()
    for step in range(config.steps):
        set_cosine_lr(optimizer, config.lr, step, config.steps)
        inputs, targets, extras = _random_batch(samples, config, generator, model.contract.extra_inputs)
        loss = F.l1_loss(model(inputs, clamp=False, **extras), targets)
        optimise(optimizer, net, ema, loss, config, step, progress)
    return finish(model, ema, config, out, started, command=command)


def set_cosine_lr(optimizer: torch.optim.Optimizer, peak: float, step: int, steps: int) -> None:
    """The cosine schedule from `peak` at step 0 down to 0 at `steps`."""
    for group in optimizer.param_groups:
        group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))


def optimise(optimizer, net: torch.nn.Module, ema: torch.nn.Module, loss: torch.Tensor, config, step: int,
             progress: Callable[[int, float], None] | None) -> None:
    """One step: backward, gradient-norm clipping at `config.clip`, the optimiser, the EMA (`config.ema`)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip)
    optimizer.step()
    ema_update(ema, net, config.ema, step)
    if progress is not None:
        progress(step + 1, loss.item())


def finish(model, ema: torch.nn.Module, config, out: str | Path, started: float, **extra: str) -> dict:
    """Swap the EMA weights in, score the test split, save them with the recipe in the header; the metadata."""
    model.net = ema
    degraded_psnr, restored_psnr = evaluate(model, load_dataset(config.data, split="test"))
    metadata = {key: str(value) for key, value in asdict(config).items()}
    metadata.update(**extra, train_seconds=f"{time.time() - started:.0f}", test_psnr_degraded=f"{degraded_psnr:.3f}",
                    test_psnr_restored=f"{restored_psnr:.3f}", torch=torch.__version__,
                    threads=str(torch.get_num_threads()))
    save_weights(ema, out, metadata)
    return metadata


def ema_update(ema: torch.nn.Module, net: torch.nn.Module, rate: float, step: int) -> None:
    """ema ← d·ema + (1−d)·net with the warm-up d = min(rate, (1+step)/(10+step)); buffers are copied."""
    with torch.no_grad():
        decay = min(rate, (1 + step) / (10 + step))
        for target, source in zip(ema.state_dict().values(), net.state_dict().values()):
            if target.dtype.is_floating_point:
                target.mul_(decay).add_(source.detach(), alpha=1 - decay)
            else:
                target.copy_(source)


def save_weights(net: torch.nn.Module, out: str | Path, metadata: dict[str, str]) -> None:
    """Write a state dict to a .safetensors file atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(out)
