"""`purify:auto`: choosing the purification timestep t* per dataset, on clean data, before a run.

After the adaptive noise-level selection (ANLS) of UAD-RS (Yu, Xu & Ghamisi, "Universal Adversarial Defense in
Remote Sensing Based on Pre-trained Denoising Diffusion Models", 2023), which ranks candidate noise levels by how
close the purified samples come to clean ones in the task network's feature space. For restoration the task
network's output *is* an image, so the distance is measured there:

1. Calibration set: the first `n` (4) images of the run's dataset — their clean captures y and ground truth x.
2. Reference perturbation: PGD L∞ at `eps` (8/255, the protocol's largest budget), 10 steps, α = ε/4, random
   start, crafted on the *undefended* model f against its own clean output (mse-clean) — a stand-in for the
   perturbations the defense must remove, made without knowing the run's attack.
3. For each candidate t* (5 … 200 of T = 1000) the whole defense D (every component, t* in place of auto;
   `ft` weights if composed) is applied to y and to y + δ, then:
     clean loss(t*) = mean PSNR(f(y), x) − mean PSNR(D(y), x)                      (what purification costs)
     recovery(t*)  = mean PSNR(D(y + δ), f(y))                                     (how close to clean output)
4. t* = the candidate with the highest recovery among those whose clean loss ≤ `loss` (1 dB); ties within
   0.01 dB go to the smaller t*. When no candidate keeps the loss under the bound, the smallest candidate is used
   and the record says so (`met: false`).

Everything is seeded from the run's seed (same images, same PGD start, same diffusion noise), so the choice is
reproducible and part of the run record (`defense_params` column: the chosen t* and every candidate's numbers).
The calibration images are the run's own first images, as ANLS tunes on the dataset it defends; set n to use
more. Cost: one 10-step PGD per image plus two purifications per candidate and image (≈ 30–60 s on 2 CPU cores
for 128 px images).
"""

from __future__ import annotations

import torch

from udcbench.errors import SpecError
from udcbench.metrics import psnr
from udcbench.spec import image_seed

# purify:auto settings: max clean PSNR loss in dB, calibration images, reference-perturbation budget in /255
AUTO_KEYS = {"loss": 1.0, "n": 4, "eps": 8.0}
CANDIDATES = (5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200)
CRITERION = ("max mean PSNR(D(y+δ), f(y)) over t* with clean PSNR loss ≤ bound; δ = PGD-10 L∞ on the undefended "
             "model (UAD-RS-style noise-level selection)")


def _generator(seed: int, image: str, stage: str) -> torch.Generator:
    return torch.Generator().manual_seed(image_seed(seed, image, stage))


def select_t_star(component, defense, model, dataset, seed: int, device: torch.device | str = "cpu") -> int:
    """Set `component.t_star` (a PurifyDefense with t_star None) by the criterion above; returns it.

    `defense`: the whole Defense the component belongs to; `model`: the undefended RestorationModel; `dataset`:
    the run's dataset (indexable samples). The calibration is stored in `component.chosen`.
    """
    from udcbench.attacks import make_attack, make_objective

    settings = {**AUTO_KEYS, **component.auto}
    bound, count, eps = settings["loss"], int(settings["n"]), settings["eps"] / 255
    if count < 1 or bound < 0 or not 0 < eps <= 1:
        raise SpecError(f"purify:auto needs n ≥ 1, loss ≥ 0 dB and 0 < eps ≤ 255 (got n={count:g}, "
                        f"loss={bound:g}, eps={settings['eps']:g}); e.g. purify:auto,loss=1,n=4,eps=8")
    if component.prior is None:
        raise SpecError("purify:auto has no diffusion prior to calibrate; pass prior=PATH")
    candidates = [t for t in CANDIDATES if component.steps <= t < component.prior.schedule.T]
    if not candidates:
        raise SpecError(f"purify:auto has no candidate t* for steps={component.steps}; use fewer steps")
    attack = make_attack("pgd", eps=eps, steps=10)
    objective = make_objective("mse-clean")
    losses = {t: 0.0 for t in candidates}
    recoveries = {t: 0.0 for t in candidates}
    samples = [dataset[index] for index in range(min(count, len(dataset)))]
    for sample in samples:
        clean, gt = sample.degraded[None].to(device), sample.gt[None].to(device)
        bound_model = model.bind(**{k: v[None].to(device) for k, v in sample.extras.items()
                                    if k in model.contract.extra_inputs})
        defended_model = defense.prepare_model(bound_model)
        with torch.no_grad():
            clean_output = bound_model(clean)
        reference = objective.reference(clean_output, gt, clean)
        adversarial = attack(bound_model, clean, objective, reference, _generator(seed, sample.name, "auto-attack"))
        clean_psnr = psnr(clean_output, gt).item()
        for t in candidates:
            component.t_star = t
            with torch.no_grad():
                both = defended_model(defense.transform(torch.cat([clean, adversarial]),
                                                        _generator(seed, sample.name, f"auto-{t}")))
            losses[t] += (clean_psnr - psnr(both[:1], gt).item()) / len(samples)
            recoveries[t] += psnr(both[1:], clean_output).item() / len(samples)
    allowed = [t for t in candidates if losses[t] <= bound]
    met = bool(allowed)
    if met:
        best = max(recoveries[t] for t in allowed)
        chosen = min(t for t in allowed if recoveries[t] >= best - 0.01)
    else:
        chosen = candidates[0]
    component.t_star = chosen
    component.chosen = {"t_star": chosen, "met": met, "criterion": CRITERION, "loss_bound_db": bound,
                        "images": [s.name for s in samples], "eps": settings["eps"],
                        "candidates": {str(t): {"clean_loss_db": round(losses[t], 3),
                                                "recovery_db": round(recoveries[t], 3)} for t in candidates}}
    return chosen
