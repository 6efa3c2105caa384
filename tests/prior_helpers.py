"""A tiny diffusion prior written to disk, shared by the defense tests."""

import torch

from udcbench.defenses.diffusion import DiffusionPrior, PriorUNet, save_prior


def save_tiny_prior(path, seed=0):
    """A small randomly initialised prior (64 px tiles) written in udcbench's prior format."""
    torch.manual_seed(seed)
    save_prior(DiffusionPrior(PriorUNet(base=8, mults=(1, 2)), size=64), path)
    return path
