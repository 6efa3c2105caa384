"""Scoring: restore, attack, defend and score a batch of images for every run of a group, sharing the work.

A *group* is the runs of a plan that use one model (same weights), one dataset, seed, batch size and precision.
For each batch of images the group's runs share:
  - the clean output f(y): computed once per image, whatever the attack, ε, defense or threat model;
  - the defended clean output D(y) (e.g. the purified input through the fine-tuned model): once per defense;
  - the gray-box adversarial example y' and f(y'): an attack crafted on the undefended model does not depend on
    the defense, so it is computed once and scored through every defense of the group.
Every item is exactly what a run on its own computes (same seeds, same operations), so sharing never changes
a number. `SharedWork` counts what was computed and reused, and the network passes the reuse saved.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from udcbench.metrics.base import score
from udcbench.spec import image_seed
from udcbench.version import __version__


@dataclass
class Job:
    """Everything resolved for one run (runner/prepare.py): what scoring needs, and `labels`, the settings written
    into every row (read only to label rows and reports)."""

    run_hash: str
    model: torch.nn.Module
    attack: object
    objective: object
    defense: object
    dataset: object
    device: torch.device
    labels: dict
    metrics: tuple = ()  # udcbench.metrics.base.Metric descriptors, the default ones first
    mask: object = None  # None, or a function (H, W) -> (1, 1, H, W) mask restricting δ
    adaptive_attack: object = None  # threat "adaptive": the attack run through the defense (EOT-wrapped if random)
    batch_size: int = 1
    precision: str = "fp32"
    seed: int = 0
    scoring: str = "float"  # "8bit": outputs rounded to 8 bits before scoring
    mask_spec: str | None = None  # the mask as given (box:... or a file)
    defense_params: str | None = None  # the defense's records (JSON), as hashed
    spec: object = None  # the RunSpec it was prepared from
    warnings: list = field(default_factory=list)  # settings that run but mislead (printed by the CLI)
    notes: list = field(default_factory=list)  # how it executes: --memory / --compile decisions (printed by the CLI)
    eps_partners: list = field(default_factory=list)  # --eps-batch: the runs crafted with this one (plan.py)
    radii: tuple = ()  # --radius: L2 radii at which a smoothed defense's certified PSNR is scored

    @property
    def attacks_bare_model(self) -> bool:
        """True when the attack is crafted on the undefended model (gray-box, or no defense at all)."""
        return self.adaptive_attack is None or self.defense.is_identity

    @property
    def attack_key(self) -> str:
        """What decides the gray-box adversarial example besides the model, images and seed."""
        return json.dumps([self.attack.name, self.attack.params, self.objective.name,
                           getattr(self.objective, "target", None), self.mask_spec], sort_keys=True, default=str)

    @property
    def defense_key(self) -> str:
        return json.dumps([self.defense.spec, self.defense_params])


def batch_generator(seed: int, names: list[str], stage: str) -> torch.Generator:
    """The seeded draws of one batch: for a single image exactly those of a run with --batch-size 1 (so results
    do not depend on which other runs share the work); a batch of several images draws once for all of them."""
    return torch.Generator().manual_seed(image_seed(seed, "|".join(names), stage))


@dataclass
class SharedWork:
    """Items reused within a batch, and counts: `computed` / `reused` per kind (clean outputs, defended clean
    outputs, adversarial examples), `passes` = network passes run (a pass that builds a graph for a gradient
    counts twice: forward and backward), `saved` = the passes the reused items would have cost again."""

    computed: Counter = field(default_factory=Counter)
    reused: Counter = field(default_factory=Counter)
    passes: int = 0
    saved: int = 0
    items: dict = field(default_factory=dict)
    images: int = 1  # images in the current batch: counts are per image

    def get(self, kind: str, key, compute):
        if (kind, key) in self.items:
            value, cost = self.items[(kind, key)]
            if cost is None:  # computed together with another item (put), first use: counts as computed
                self.items[(kind, key)] = (value, 0)
                self.computed[kind] += self.images
                return value
            self.reused[kind] += self.images
            self.saved += cost
            return value
        before = self.passes
        value = compute()
        self.items[(kind, key)] = (value, self.passes - before)
        self.computed[kind] += self.images
        return value

    def put(self, kind: str, key, value) -> None:
        """An item computed along with another one (its passes are counted there)."""
        self.items.setdefault((kind, key), (value, None))

    def clear(self) -> None:
        self.items.clear()

    @contextlib.contextmanager
    def counting(self, networks=()):
        """Count every pass of a restoration model, or of one of `networks` (a defense's diffusion prior), per
        image, while the block runs."""
        from udcbench.models.base import RestorationModel

        others = {id(network) for network in networks}

        def hook(module, inputs):
            counted = isinstance(module, RestorationModel) or id(module) in others
            if counted and inputs and isinstance(inputs[0], torch.Tensor):
                images = inputs[0].shape[0] if inputs[0].dim() == 4 else 1
                grad = torch.is_grad_enabled() and inputs[0].requires_grad
                self.passes += images * (2 if grad else 1)

        handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def merge(self, other: "SharedWork") -> None:
        self.computed.update(other.computed)
        self.reused.update(other.reused)
        self.passes += other.passes
        self.saved += other.saved

    def as_dict(self) -> dict:
        return {"computed": dict(self.computed), "reused": dict(self.reused), "passes": self.passes,
                "saved": self.saved}


def _autocast(job: Job):
    if job.precision == "bf16":
        return torch.autocast(device_type=job.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _stack(samples, key: str, device) -> torch.Tensor:
    return torch.stack([getattr(s, key) for s in samples]).to(device)


def score_batch(jobs: list[Job], samples: list, work: SharedWork, keep: dict | None = None) -> dict[str, list[dict]]:
    """Rows of every job for a batch of samples (one shape); the jobs share model, dataset, seed and batch.
    `keep` (a dict) receives the last job's images: degraded, adversarial, restored, restored_adv, defended_adv,
    gt (for `udcbench plot`)."""
    first = jobs[0]
    device = first.device
    degraded, gt = _stack(samples, "degraded", device), _stack(samples, "gt", device)
    inputs = {k: torch.stack([s.extras[k] for s in samples]).to(device) for k in samples[0].extras
              if all(isinstance(s.extras.get(k), torch.Tensor) for s in samples)}
    model = first.model.bind(**{k: inputs[k] for k in first.model.contract.extra_inputs})
    rows: dict[str, list[dict]] = {}
    work.images = len(samples)
    networks = [network for job in jobs for network in job.defense.networks()]
    with work.counting(networks), _autocast(first):
        for job in jobs:
            rows[job.run_hash] = _score_job(job, model, samples, degraded, gt, work, keep, inputs)
    return rows


def quantise(image: torch.Tensor, scoring: str) -> torch.Tensor:
    """What is scored: the float output ("float", default), or the output rounded to 8 bits ("8bit"), as a
    paper that saves its outputs as PNG files measures them."""
    return torch.round(image.clamp(0.0, 1.0) * 255.0) / 255.0 if scoring == "8bit" else image


def _metrics(job: Job, degraded, gt, clean_output, defended_clean, adversarial, adversarial_output,
             defended_adv, reference) -> dict:
    """Per-image values of one job's batch: every metric on each of its pairs (metrics/base.py PAIRS; float
    outputs, or 8-bit ones with scoring 8bit), ‖δ‖ in float64 and the objective."""
    images = {"degraded": degraded, "adversarial": adversarial, "gt": quantise(gt, job.scoring),
              "clean": quantise(clean_output, job.scoring), "adv": quantise(adversarial_output, job.scoring),
              "defended_clean": quantise(defended_clean, job.scoring),
              "defended_adv": quantise(defended_adv, job.scoring)}
    delta = (adversarial.double() - degraded.double()).flatten(1)
    return {**score(job.metrics, images), "linf": delta.abs().max(dim=1).values, "l2": delta.norm(dim=1),
            "objective_clean": job.objective(clean_output, reference),
            "objective_adv": job.objective(adversarial_output, reference)}


def _restore(defense, model, image: torch.Tensor, generator: torch.Generator):
    """(the defended output in float, a smoothed defense's sorted samples or None)."""
    output, samples = defense.restore(model, image, generator, keep=True)
    return output.float(), samples


def _certified(job: Job, samples, gt: torch.Tensor, smoothed_clean: torch.Tensor) -> dict:
    """--radius: each radius's certified PSNR vs ground truth and vs the smoothed clean output (certify.py),
    {cpsnr_r<r>_cert_gt: (B,), cpsnr_r<r>_cert_clean: (B,)}; {} without radii."""
    if not job.radii:
        return {}
    from udcbench.defenses.certify import certify
    from udcbench.metrics.base import certified_prefix

    smoother = job.defense.smoother
    found = certify(samples, smoother.sigma, smoother.alpha, job.radii, gt, smoothed_clean)
    values = {}
    for radius, (against_gt, against_clean) in found.items():
        prefix = certified_prefix(radius)
        values.update({f"{prefix}_cert_gt": against_gt, f"{prefix}_cert_clean": against_clean})
    return values


def _score_job(job: Job, model, samples, degraded, gt, work: SharedWork, keep: dict | None = None,
               inputs: dict | None = None):
    seed, names = job.seed, [s.name for s in samples]
    started = time.perf_counter()
    with torch.no_grad():  # computed once: the reference and the undefended clean output
        clean_output = work.get("clean output", None, lambda: model(degraded).float())
    defended_model = job.defense.prepare_model(model)
    sorted_outputs = None  # a smoothed defense's sorted outputs on the clean input (its certificates' samples)
    with torch.no_grad():
        if job.defense.is_identity:
            defended_clean = clean_output
        else:
            defended_clean, sorted_outputs = work.get("defended clean output", job.defense_key, lambda: _restore(
                job.defense, defended_model, degraded, batch_generator(seed, names, "def-clean")))
    reference = job.objective.reference(clean_output, gt, degraded)
    time_clean = time.perf_counter() - started

    started = time.perf_counter()
    mask = None if job.mask is None else job.mask(*degraded.shape[-2:])

    def craft(attack, target, attack_reference):
        attack.last_queries = attack.last_iterations = None
        attack.inputs = inputs or {}
        adversarial = attack(target, degraded, job.objective, attack_reference,
                             batch_generator(seed, names, "attack"), mask=mask).detach()
        with torch.no_grad():
            return adversarial, (attack.last_queries, attack.last_iterations), model(adversarial).float()

    def craft_stack():
        """--eps-batch: every partner's example from one pass over a K·B batch; the others wait in `work`."""
        partners, count = job.eps_partners, len(job.eps_partners)
        stacked = job.model.bind(**{k: v.repeat(count, *[1] * (v.dim() - 1)) for k, v in (inputs or {}).items()
                                    if k in job.model.contract.extra_inputs})
        budgets = [(p.attack.params["eps"], p.attack.params["alpha"]) for p in partners]
        results = job.attack.perturb_budgets(stacked, degraded, job.objective, reference,
                                             batch_generator(seed, names, "attack"), budgets)
        with torch.no_grad():
            items = {p.attack_key: (adv.detach(), (None, None), model(adv.detach()).float())
                     for p, adv in zip(partners, results)}
        for key, item in items.items():
            if key != job.attack_key:
                work.put("adversarial example", key, item)
        return items[job.attack_key]

    if job.attacks_bare_model:
        adversarial, (queries, iterations), adversarial_output = work.get(
            "adversarial example", job.attack_key,
            craft_stack if job.eps_partners else lambda: craft(job.attack, model, reference))
    else:
        # adaptive: the attacker differentiates (or queries) the whole defended system, with fresh defense
        # randomness on every call, and pushes its output away from the defended clean output
        draws = batch_generator(seed, names, "def-attack")

        def target(image: torch.Tensor) -> torch.Tensor:
            return job.defense.restore(defended_model, image, draws, differentiable=True)

        adversarial, (queries, iterations), adversarial_output = work.get(
            "adversarial example", job.run_hash,
            lambda: craft(job.adaptive_attack, target, job.objective.reference(defended_clean, gt, degraded)))
    time_attack = time.perf_counter() - started

    started = time.perf_counter()
    with torch.no_grad():
        if job.defense.is_identity:
            defended_adv = adversarial_output
        else:
            defended_adv = job.defense.restore(defended_model, adversarial,
                                               batch_generator(seed, names, "def-adv")).float()
        metrics = _metrics(job, degraded, gt, clean_output, defended_clean, adversarial, adversarial_output,
                           defended_adv, reference)
        metrics.update(_certified(job, sorted_outputs, gt, defended_clean))
    time_eval = time.perf_counter() - started
    if keep is not None:
        keep.update(degraded=degraded, adversarial=adversarial, restored=clean_output, restored_adv=adversarial_output,
                    defended_adv=defended_adv, gt=gt)
    count = len(samples)
    common = dict(job.labels, run_hash=job.run_hash, attack_params=json.dumps(job.attack.params, sort_keys=True),
                  udcbench_version=__version__, torch_version=torch.__version__,
                  created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  # wall time of the batch, shared out per image
                  time_clean_s=time_clean / count, time_attack_s=time_attack / count, time_eval_s=time_eval / count)
    rows = []
    for index, sample in enumerate(samples):
        row = dict(common, image=sample.name,
                   queries=None if queries is None else int(queries.reshape(-1)[index]),
                   iterations=None if iterations is None else int(iterations.reshape(-1)[index]))
        row.update({name: value[index].item() for name, value in metrics.items()})
        rows.append(row)
    return rows


def run_unit(jobs, indices: list[int]) -> tuple[list[dict], SharedWork]:
    """Rows of `jobs` (one group) on the images `indices`; images of different sizes form their own batch.
    Every executor scores a unit with this function, so they produce the same rows."""
    dataset = jobs[0].dataset
    samples = [dataset[index] for index in indices]
    parts, current = [], []
    for sample in samples:
        if current and sample.degraded.shape != current[0].degraded.shape:
            parts.append(current)
            current = []
        current.append(sample)
    parts.append(current)
    work, rows = SharedWork(), []
    for part in parts:
        for job_rows in score_batch(jobs, part, work).values():
            rows.extend(job_rows)
        work.clear()
    return rows, work
