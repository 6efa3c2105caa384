"""Tiled noise prediction: a diffusion prior trained on small crops applied to images of any size.

Images larger than the prior's native size are processed in overlapping tiles of that size blended with
raised-cosine weights (two facing ramps sum to 1, so there are no seams); smaller ones are reflect-padded and
cropped back. `predict_tiled` returns whatever the prior predicts (ε̂, and v for a learned-σ prior).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from udcbench.defenses.diffusion import DiffusionPrior


def _pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad bottom/right up to (height, width), repeating the reflection for very small inputs."""
    while x.shape[-2] < height or x.shape[-1] < width:
        bottom, right = height - x.shape[-2], width - x.shape[-1]
        if min(x.shape[-2:]) < 2:
            return F.pad(x, (0, max(right, 0), 0, max(bottom, 0)), mode="replicate")
        x = F.pad(x, (0, min(max(right, 0), x.shape[-1] - 1), 0, min(max(bottom, 0), x.shape[-2] - 1)),
                  mode="reflect")
    return x


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering [0, length) with stride tile − overlap; the last tile ends at the border."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def _ramp(tile: int, overlap: int, lead: bool, trail: bool) -> torch.Tensor:
    """1-D blending weights: raised-cosine ramps over `overlap` px on the sides that meet another tile.
    Two facing ramps sum to 1 (sin² + cos²), so a blended constant stays constant."""
    weight = torch.ones(tile)
    if overlap > 0:
        edge = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap) + 0.5) / overlap)
        if lead:
            weight[:overlap] = torch.minimum(weight[:overlap], edge)
        if trail:
            weight[-overlap:] = torch.minimum(weight[-overlap:], edge.flip(0))
    return weight


def predict_tiled(prior: DiffusionPrior, x: torch.Tensor, t: int | torch.Tensor, tile: int,
                  overlap: int) -> torch.Tensor:
    """The prior's prediction (`prior.predict`: ε̂, and v for a learned-σ prior) for any H, W: one padded pass
    when the image fits in a tile, else blended overlapping tiles. t: an int, or a (B,) tensor of per-image
    timesteps."""
    height, width = x.shape[-2:]
    padded = _pad(x, max(height, tile), max(width, tile))
    rows, columns = _starts(padded.shape[-2], tile, overlap), _starts(padded.shape[-1], tile, overlap)
    if len(rows) == 1 and len(columns) == 1:
        return prior.predict(padded, t)[..., :height, :width]
    tiles = torch.cat([padded[..., r:r + tile, c:c + tile] for r in rows for c in columns])
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1).repeat(len(rows) * len(columns))
    predictions = prior.predict(tiles, t).split(x.shape[0])
    total = torch.zeros(padded.shape[0], predictions[0].shape[1], *padded.shape[2:], device=x.device, dtype=x.dtype)
    weights = torch.zeros(padded.shape[-2:], device=x.device, dtype=x.dtype)
    for index, (r, c) in enumerate((r, c) for r in rows for c in columns):
        along_rows = _ramp(tile, overlap, r > 0, r + tile < padded.shape[-2])
        along_columns = _ramp(tile, overlap, c > 0, c + tile < padded.shape[-1])
        window = (along_rows[:, None] * along_columns[None, :]).to(x.device, x.dtype)
        total[..., r:r + tile, c:c + tile] += predictions[index] * window
        weights[r:r + tile, c:c + tile] += window
    return (total / weights)[..., :height, :width]


def predict_noise_tiled(prior: DiffusionPrior, x: torch.Tensor, t: int | torch.Tensor, tile: int,
                        overlap: int) -> torch.Tensor:
    """ε̂(x, t) for any H, W (`predict_tiled` without a learned-σ prior's v channels)."""
    return predict_tiled(prior, x, t, tile, overlap)[:, :3]
