"""The local executor: one image at a time through clean restoration, attack, defense and scoring."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import torch

import udcbench
from udcbench.metrics import psnr, ssim
from udcbench.spec import image_seed


@dataclass
class Job:
    """Everything resolved for one run: what `execute` needs, plus the labels written into every row."""

    run_hash: str
    model: torch.nn.Module
    attack: object
    objective: object
    defense: object
    dataset: object
    device: torch.device
    labels: dict
    mask: object = None  # None, or a function (H, W) -> (1, 1, H, W) mask restricting δ
    lpips_net: str | None = None  # "alex" / "vgg": also score LPIPS
    adaptive_attack: object = None  # threat "adaptive": the attack run through the defense (EOT-wrapped if random)


def _generator(seed: int, image: str, stage: str) -> torch.Generator:
    return torch.Generator().manual_seed(image_seed(seed, image, stage))


def score_image(job: Job, sample) -> dict:
    """Restore, attack, defend and score one sample; returns a full result row."""
    seed = job.labels["seed"]
    degraded = sample.degraded[None].to(job.device)
    gt = sample.gt[None].to(job.device)
    model = job.model.bind(**{k: v[None].to(job.device) for k, v in sample.extras.items()
                              if k in job.model.contract.extra_inputs})
    defended_model = job.defense.prepare_model(model)

    started = time.perf_counter()
    with torch.no_grad():
        clean_output = model(degraded)  # computed once: the reference and the undefended clean output
        if job.defense.is_identity:
            defended_clean = clean_output
        else:
            defended_clean = defended_model(job.defense.transform(degraded, _generator(seed, sample.name, "def-clean")))
    reference = job.objective.reference(clean_output, gt, degraded)
    time_clean = time.perf_counter() - started

    started = time.perf_counter()
    mask = None if job.mask is None else job.mask(*degraded.shape[-2:])
    attack, target, attack_reference = job.attack, model, reference
    if job.adaptive_attack is not None and not job.defense.is_identity:
        # adaptive: the attacker differentiates (or queries) the whole defended system, with fresh defense
        # randomness on every call, and pushes its output away from the defended clean output
        draws = _generator(seed, sample.name, "def-attack")

        def target(image: torch.Tensor) -> torch.Tensor:
            return defended_model(job.defense.differentiable_transform(image, draws))

        attack = job.adaptive_attack
        attack_reference = job.objective.reference(defended_clean, gt, degraded)
    attack.last_queries = None
    adversarial = attack(target, degraded, job.objective, attack_reference, _generator(seed, sample.name, "attack"),
                         mask=mask)
    queries = attack.last_queries
    time_attack = time.perf_counter() - started

    started = time.perf_counter()
    with torch.no_grad():
        adversarial_output = model(adversarial)
        if job.defense.is_identity:
            defended_adv = adversarial_output
        else:
            defended_adv = defended_model(job.defense.transform(adversarial, _generator(seed, sample.name, "def-adv")))
        delta = adversarial - degraded
        row = {
            "psnr_degraded_gt": psnr(degraded, gt).item(),
            "psnr_clean_gt": psnr(defended_clean, gt).item(), "ssim_clean_gt": ssim(defended_clean, gt).item(),
            "psnr_adv_gt": psnr(defended_adv, gt).item(), "ssim_adv_gt": ssim(defended_adv, gt).item(),
            "psnr_adv_clean": psnr(defended_adv, defended_clean).item(),
            "ssim_adv_clean": ssim(defended_adv, defended_clean).item(),
            "psnr_clean_gt_undefended": psnr(clean_output, gt).item(),
            "ssim_clean_gt_undefended": ssim(clean_output, gt).item(),
            "psnr_adv_gt_undefended": psnr(adversarial_output, gt).item(),
            "ssim_adv_gt_undefended": ssim(adversarial_output, gt).item(),
            "psnr_input_adv": psnr(adversarial, degraded).item(),
            "linf": delta.abs().max().item(), "l2": delta.flatten().norm().item(),
            "queries": None if queries is None else int(queries.reshape(-1)[0]),
            "objective_clean": job.objective(clean_output, reference).item(),
            "objective_adv": job.objective(adversarial_output, reference).item(),
            "lpips_clean_gt": None, "lpips_adv_gt": None, "lpips_adv_clean": None,
        }
        if job.lpips_net is not None:
            from udcbench.metrics.lpips import lpips

            row.update(lpips_clean_gt=lpips(defended_clean, gt, job.lpips_net).item(),
                       lpips_adv_gt=lpips(defended_adv, gt, job.lpips_net).item(),
                       lpips_adv_clean=lpips(defended_adv, defended_clean, job.lpips_net).item())
    row.update(time_clean_s=time_clean, time_attack_s=time_attack, time_eval_s=time.perf_counter() - started)
    row.update(job.labels)
    row.update(run_hash=job.run_hash, image=sample.name, attack_params=json.dumps(job.attack.params, sort_keys=True),
               udcbench_version=udcbench.__version__, torch_version=torch.__version__,
               created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return row


def execute(job: Job, store, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Score every sample not yet stored for this run hash; returns counts of done / skipped images."""
    done = store.done(job.run_hash)
    names = job.dataset.names()
    todo = [i for i, name in enumerate(names) if name not in done]
    skipped = len(names) - len(todo)
    if progress:
        progress(skipped, len(names), "")
    for count, index in enumerate(todo, start=1):
        sample = job.dataset[index]
        store.add(score_image(job, sample))
        if progress:
            progress(skipped + count, len(names), sample.name)
    return {"images": len(names), "computed": len(todo), "skipped": skipped}
