"""`smooth:sigma=auto,radius=R`: choosing the smoothing noise level σ on clean data, before a run.

DUCD (Li et al., 2024) optimises the noise level of its smoothed surrogate for the certified region it needs
while keeping the surrogate useful. udcbench does the same with a documented, reproducible criterion:

1. Calibration set: the first `images` (2) images of the run's dataset — clean captures y, ground truth x.
2. For each candidate σ in CANDIDATES whose n samples can certify radius R at all (smaller σ need more samples:
   certify.smallest_n; the others would only get the trivial bound and are listed as not certifiable), the
   smoothed system g_σ (the whole defense with σ in place of auto,
   its n samples, the run's seed) is evaluated on every y:
     clean loss(σ) = mean PSNR(f(y), x) − mean PSNR(g_σ(y), x)          (what smoothing costs; f undefended)
     certified(σ)  = mean certified PSNR(g_σ, y, R) vs x                 (certify.py, at confidence 1 − α)
3. σ = the candidate with the highest certified PSNR among those whose clean loss ≤ `loss` (3 dB); ties within
   0.01 dB go to the smaller σ. When no candidate meets the bound, the one with the smallest clean loss is used
   and the record says so (`met: false`).

Every candidate's numbers and the choice are recorded with the run (`defense_params`: sigma, and under "auto"
the criterion and the candidates), like purify:auto; the choice is part of the run's hash, the calibration
numbers are not. Cost: n network passes per candidate and calibration image.
"""

from __future__ import annotations

import torch

from udcbench.defenses.certify import bounds, certified_psnr, smallest_n
from udcbench.errors import SpecError
from udcbench.metrics import psnr
from udcbench.spec import image_seed

CANDIDATES = (0.06, 0.12, 0.25, 0.5, 1.0)
CRITERION = ("max mean certified PSNR vs ground truth at the radius over σ with clean PSNR loss ≤ bound "
             "(DUCD-style noise selection)")


def _evaluate(component, defense, model, sample, sigma: float, seed: int, device) -> tuple[float, float, float]:
    """(undefended clean PSNR, smoothed clean PSNR, certified PSNR at the radius) of one calibration image."""
    degraded, gt = sample.degraded.unsqueeze(0).to(device), sample.gt.unsqueeze(0).to(device)
    extras = {k: v.unsqueeze(0).to(device) for k, v in sample.extras.items() if isinstance(v, torch.Tensor)}
    bound = model.bind(**{k: extras[k] for k in model.contract.extra_inputs if k in extras})
    defended = defense.prepare_model(bound)
    generator = torch.Generator().manual_seed(image_seed(seed, sample.name, "smooth-auto"))
    with torch.no_grad():
        clean = bound(degraded).float().clamp(0, 1)
        component.sigma = sigma
        smoothed, samples = defense.restore(defended, degraded, generator, keep=True)
    lower, upper = bounds(samples, sigma, component.radius, component.alpha)
    return (psnr(clean, gt).item(), psnr(smoothed, gt).item(),
            certified_psnr(lower, upper, gt).item())


def certifiable(component, coordinates: int) -> list[float]:
    """The candidates whose n samples can certify the radius at all (the others only give the trivial bound of
    the output range, so they are not evaluated); SpecError when none can."""
    found = [sigma for sigma in CANDIDATES
             if (smallest_n(sigma, component.radius, component.alpha, coordinates) or float("inf")) <= component.n]
    if not found:
        needed = smallest_n(CANDIDATES[-1], component.radius, component.alpha, coordinates)
        raise SpecError(f"smooth:sigma=auto: with n={component.n} no σ in {', '.join(map(str, CANDIDATES))} certifies "
                        f"radius {component.radius:g} (σ={CANDIDATES[-1]:g} needs n ≥ {needed:,}); raise n or lower "
                        "the radius")
    return found


def select_sigma(component, defense, model, dataset, seed: int, device="cpu") -> float:
    """Set `component.sigma` (a SmoothDefense with sigma=auto) by the criterion above; returns it. The
    calibration is stored in `component.chosen`."""
    samples = [dataset[index] for index in range(min(component.images, len(dataset)))]
    coordinates = max(sample.degraded.numel() for sample in samples)
    table = []
    for sigma in certifiable(component, coordinates):
        values = [_evaluate(component, defense, model, sample, sigma, seed, device) for sample in samples]
        undefended, smoothed, certified = (sum(column) / len(values) for column in zip(*values))
        table.append({"sigma": sigma, "clean_loss_db": round(undefended - smoothed, 4),
                      "clean_psnr": round(smoothed, 4), "certified_psnr": round(certified, 4)})
    meeting = [row for row in table if row["clean_loss_db"] <= component.loss]
    if meeting:
        best = max(row["certified_psnr"] for row in meeting)
        chosen = next(row for row in meeting if row["certified_psnr"] >= best - 0.01)
    else:
        chosen = min(table, key=lambda row: row["clean_loss_db"])
    component.sigma = chosen["sigma"]
    skipped = [sigma for sigma in CANDIDATES if sigma not in [row["sigma"] for row in table]]
    component.chosen = {"criterion": CRITERION, "radius": component.radius, "loss_bound_db": component.loss,
                        "images": len(samples), "met": bool(meeting), "candidates": table,
                        "not_certifiable_with_n": skipped}
    return component.sigma
