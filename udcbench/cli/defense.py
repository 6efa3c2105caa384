"""`udcbench finetune`, `udcbench train-prior` and `udcbench train-guide`: how the defense weights are made."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from udcbench.cli.common import console, invoked_command, step_logger
from udcbench.errors import SpecError
from udcbench.outputs import check_file


def finetune(
    model: str = typer.Option("uformer", "--model", "-m", help="Model to fine-tune (from its bundled weights)."),
    defense: str = typer.Option("purify", "--defense", "-d", help="Input defense the model learns to follow "
                                "(purify: a t* drawn per crop from --t-min..--t-max)."),
    data: str = typer.Option("udc-mini", "--data", help="Dataset with a train split."),
    steps: int = typer.Option(300, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(128, "--crop", help="Crop side in pixels."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (cosine schedule)."),
    t_min: int = typer.Option(10, "--t-min", help="Smallest purification t* drawn for a crop."),
    t_max: int = typer.Option(50, "--t-max", help="Largest purification t* drawn for a crop."),
    adv: Optional[str] = typer.Option(None, "--adv", help="pgd: adversarial fine-tuning (PGD-AT on the fly)."),
    vgg19: Optional[Path] = typer.Option(None, "--vgg19", metavar="FILE", help="ImageNet VGG-19 weights (torchvision's "
                                         "vgg19-dcbb9e9d.pth) for the perceptual loss; else L1 + SSIM."),
    seed: int = typer.Option(0, "--seed", help="Seed for crops, flips, t* and noise."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Output .safetensors file (use with "
                             "--defense ft:FILE)."),
) -> None:
    """Fine-tune a restoration model on purified (defended) inputs, as the reference study does.

    Example: udcbench finetune -m uformer --defense purify -o ft.safetensors"""
    from udcbench.defenses.finetune import FinetuneConfig, finetune as run_finetune
    from udcbench.models.train import check_training

    check_training(steps, batch_size, crop, lr)
    check_file(out, "--out", (".safetensors",))
    config = FinetuneConfig(model=model, defense=defense, data=data, steps=steps, batch_size=batch_size,
                            crop=crop, lr=lr, t_min=t_min, t_max=t_max, adv=adv,
                            vgg19=None if vgg19 is None else str(vgg19), seed=seed)
    meta = run_finetune(config, out, command=invoked_command(), progress=step_logger(steps))
    console.print(f"saved {out} ({meta['loss']}): test PSNR {meta['test_psnr_degraded']} dB (degraded) → "
                  f"{meta['test_psnr_restored']} dB (restored, undefended inputs)")


def train_prior(
    data: str = typer.Option("udc-mini", "--data", help="Dataset whose clean ground truth the prior learns."),
    split: str = typer.Option("train", "--split", help="Split of --data to train on."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(24, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(64, "--crop", help="Crop side = the prior's native tile size."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (cosine schedule)."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, crops, flips, timesteps and noise."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Output .safetensors file (use with "
                             "--defense purify:prior=FILE)."),
) -> None:
    """Train the small image-prior diffusion model (DDPM, ε-prediction) that `purify` uses.

    Example: udcbench train-prior --steps 600 -o prior.safetensors"""
    import torch

    from udcbench.data import load_dataset
    from udcbench.defenses.diffusion import save_prior
    from udcbench.defenses.prior_training import train_prior as run_train_prior
    from udcbench.models.train import check_training

    check_training(steps, batch_size, crop, lr)
    check_file(out, "--out", (".safetensors",))
    if out.exists():
        raise SpecError(f"{out} exists; remove it or choose another --out")
    images = [sample.gt for sample in load_dataset(data, split=split)]
    prior = run_train_prior(images, steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed,
                            progress=step_logger(steps, timed=True))
    save_prior(prior, out, meta={"command": invoked_command(), "data": data, "split": split,
                                 "images": str(len(images)), "threads": str(torch.get_num_threads())})
    console.print(f"saved {out}: {sum(p.numel() for p in prior.parameters()):,} parameters, final loss "
                  f"{prior.meta['final_loss']}, {prior.meta['train_seconds']} s", highlight=False)


def train_guide(
    data: str = typer.Option("udc-mini", "--data", help="Dataset whose inputs (degraded captures) the guide learns."),
    split: str = typer.Option("train", "--split", help="Split of --data to train on."),
    steps: int = typer.Option(400, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(64, "--crop", help="Crop side in pixels (a multiple of 4)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule)."),
    eps: float = typer.Option(8.0, "--eps", help="L∞ budget of the training perturbation, in /255."),
    attack_steps: int = typer.Option(3, "--attack-steps", help="PGD steps of the inner maximisation."),
    t_max: int = typer.Option(100, "--t-max", help="Largest diffusion timestep a training crop is noised to."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, crops, flips, timesteps, noise and PGD starts."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Output .safetensors file (use with "
                             "--defense purify:guide=adv:FILE)."),
) -> None:
    """Train the adversarially robust guide network of purify:guide=adv (Lin et al., 2024).

    Example: udcbench train-guide --steps 400 -o guide.safetensors"""
    import torch

    from udcbench.data import load_dataset
    from udcbench.defenses.guide import save_guide, train_guide as run_train_guide
    from udcbench.models.train import check_training

    check_training(steps, batch_size, crop, lr)
    check_file(out, "--out", (".safetensors",))
    if out.exists():
        raise SpecError(f"{out} exists; remove it or choose another --out")
    if not 0 < eps <= 255:
        raise SpecError(f"--eps {eps:g} must be in (0, 255] (units of /255); e.g. --eps 8")
    images = [sample.degraded for sample in load_dataset(data, split=split)]
    net = run_train_guide(images, steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed, eps=eps / 255,
                          attack_steps=attack_steps, t_max=t_max, progress=step_logger(steps, timed=True))
    save_guide(net, out, meta={**net.meta, "command": invoked_command(), "data": data, "split": split,
                               "images": str(len(images)), "threads": str(torch.get_num_threads())})
    console.print(f"saved {out}: {sum(p.numel() for p in net.parameters()):,} parameters, final loss "
                  f"{net.meta['final_loss']}, {net.meta['train_seconds']} s", highlight=False)


COMMANDS = {"finetune": finetune, "train-prior": train_prior, "train-guide": train_guide}  # in --help order
