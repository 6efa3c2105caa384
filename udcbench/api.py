"""The Python API; the CLI and the tests go through these same functions.

    import udcbench
    model = udcbench.load_model("uformer")                 # bundled uformer-nano
    attack = udcbench.make_attack("pgd", eps=8/255, steps=20)
    frame = udcbench.run(udcbench.RunSpec(), out="runs/demo")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.objectives import parse_mask
from udcbench.data import load_dataset
from udcbench.defenses import make_defense
from udcbench.errors import SpecError
from udcbench.models import bundled_weights, load_model
from udcbench.report import leaderboard
from udcbench.report.identity import format_eps
from udcbench.runner.execute import Job
from udcbench.runner.store import ResultStore
from udcbench.spec import MEMORY_MODES, PRECISIONS, SCORINGS, THREATS, RunSpec, describe_settings, file_digest, stable_hash


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SpecError(f"unknown device {device!r}; use cpu, cuda or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("--device cuda asked for, but this torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def _cached(cache: dict | None, key: tuple, make):
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


# configurations whose runs were hashed before model options existed, with the options they were built with:
# at these values the options stay out of the hash, so their stored runs resume (uformer-t/-s/-b were built at
# train_patch 256 then and default to 128 now: their hashes always include the options)
HASHED_WITHOUT_OPTIONS = {"uformer-nano": {"train_patch": 128}}


def _check_spec(spec: RunSpec) -> None:
    if spec.threat not in THREATS:
        raise SpecError(f"threat model {spec.threat!r} is not available; choose one of {', '.join(THREATS)}")
    if spec.seed < 0:
        raise SpecError(f"--seed must be a non-negative integer, got {spec.seed}")
    if not isinstance(spec.batch_size, int) or spec.batch_size < 1:
        raise SpecError(f"--batch-size must be a positive integer, got {spec.batch_size}")
    if spec.precision not in PRECISIONS:
        raise SpecError(f"unknown precision {spec.precision!r}; use fp32 or bf16 (bf16 autocast, for GPUs)")
    if not isinstance(spec.eps_batch, int) or spec.eps_batch < 1:
        raise SpecError(f"eps_batch must be a positive integer, got {spec.eps_batch!r}")
    if spec.memory not in MEMORY_MODES:
        raise SpecError(f"unknown --memory {spec.memory!r}; use normal, low (activation checkpointing) or auto "
                        "(checkpoint only where one white-box step would not fit)")
    if spec.scoring not in SCORINGS:
        raise SpecError(f"unknown scoring {spec.scoring!r}; use float (metrics on the float outputs) or 8bit "
                        "(outputs rounded to 8 bits first)")
    if spec.lpips is not None:
        if spec.lpips not in ("alex", "vgg"):
            raise SpecError(f"--lpips takes alex or vgg, got {spec.lpips!r}")
        from udcbench.metrics.lpips import find_weights

        find_weights(spec.lpips)


def _check_inputs(attack, model, dataset) -> None:
    """Every input the model and the attack need is in the dataset, and the attack's budget fits its images —
    checked on the first sample and the image sizes, before anything is written."""
    info, first = model.info, dataset[0]
    needed = [name for name in info.contract.extra_inputs if name not in first.extras]
    if needed:
        raise SpecError(f"model {info.name} needs {', '.join(needed)} for every image, and {dataset.info.name} "
                        "supplies none; use a dataset that provides it (e.g. synth:ROOT with its "
                        "PSF/kernel_code files, or udc-mini) or another model")
    needed = [name for name in attack.required_inputs() if name not in first.extras]
    if needed:
        raise SpecError(f"attack {attack.name} needs {', '.join(needed)} for every image (for "
                        f"{attack.params.get('surrogate', 'its own model')}), and {dataset.info.name} supplies none; "
                        "use a dataset that provides it or pick a surrogate without extra inputs")
    for height, width in sorted(dataset.image_sizes()):
        attack.check_input((1, first.degraded.shape[0], height, width))


def _weights_id(info) -> str:
    if info.weights.startswith("bundled:"):
        return "bundled:" + file_digest(bundled_weights(info.name))
    if info.weights.startswith("none"):
        return "none"
    if info.weights == "random":
        return "random"
    return "file:" + file_digest(info.weights)


def attack_warnings(attack) -> list[str]:
    """Settings that run but mislead: a step schedule that cannot reach the budget makes every larger eps the
    same run (without a random start, identically so)."""
    params = attack.params
    eps, alpha, steps = params.get("eps"), params.get("alpha"), params.get("steps")
    if not all(isinstance(v, (int, float)) for v in (eps, alpha, steps)) or attack.norm not in ("linf", "l2"):
        return []
    reach = alpha * steps
    if reach >= eps * (1 - 1e-9):
        return []
    identical = "" if params.get("random_start") else " (no random start: every eps ≥ that gives an identical run)"
    return [f"{attack.name}: steps × alpha = {steps} × {format_eps(alpha, attack.norm)} = "
            f"{format_eps(reach, attack.norm)} < eps {format_eps(eps, attack.norm)}, so δ cannot reach the "
            f"budget{identical}; raise --steps or --alpha"]


def prepare(spec: RunSpec, cache: dict | None = None) -> Job:
    """Validate and resolve a spec (model, weights, attack, defense, data) without writing anything.

    `cache` (a dict kept across calls) makes the runs of a suite share one model, dataset and defense object per
    distinct configuration — the planner needs that to share work, and purify:auto then calibrates once."""
    _check_spec(spec)
    device = resolve_device(spec.device)
    attack = make_attack(spec.attack.name, **dict(spec.attack.params))
    objective = make_objective(spec.attack.objective)
    objective.check()
    mask = parse_mask(spec.attack.mask)
    model_key = ("model", spec.model.name, spec.model.weights, str(device),
                 spec.seed if spec.model.weights == "random" else None,
                 *((spec.memory, spec.batch_size * spec.eps_batch) if spec.memory != "normal" else ()))
    data_key = ("data", spec.data.name, spec.data.split, spec.data.limit)
    defense = make_defense(spec.defense.spec)  # validated before anything is loaded
    dataset = _cached(cache, data_key, lambda: load_dataset(spec.data.name, split=spec.data.split,
                                                            limit=spec.data.limit))
    model = _cached(cache, model_key, lambda: load_model(spec.model.name, weights=spec.model.weights,
                                                         device=device, seed=spec.seed))
    _check_inputs(attack, model, dataset)
    model, notes, warnings, compiled = _cached(cache, ("ready", model_key, data_key, spec.compile),
                                               lambda: _ready_model(spec, model, dataset, device, cache))
    defense = _cached(cache, ("defense", spec.defense.spec, model_key, data_key, spec.seed),
                      lambda: _ready_defense(defense, model, dataset, spec.seed, device))
    resolved, labels = _identity(spec, model.info, attack, objective, defense, dataset, device)
    if compiled:  # equal to eager within 1e-4 relative, not bit for bit: its rows never merge with eager ones
        resolved["backend"] = labels["backend"] = "compiled"
    adaptive_attack, draws = None, None
    if spec.threat == "adaptive":
        adaptive_attack, draws = adaptive_attack_for(attack, defense, spec.eot)
        resolved["eot"] = labels["eot"] = draws
    return Job(run_hash=stable_hash(resolved), model=model, attack=attack, objective=objective, defense=defense,
               dataset=dataset, device=device, labels=labels, mask=mask, lpips_net=spec.lpips,
               adaptive_attack=adaptive_attack, batch_size=spec.batch_size, precision=spec.precision, spec=spec,
               warnings=attack_warnings(attack) + warnings, notes=notes)


def _ready_model(spec: RunSpec, model, dataset, device, cache):
    """--memory and --compile applied to a loaded model (runner/accelerate.py): (model to run, notes, warnings,
    compiled?). One Compiler serves a whole suite (kept in `cache`)."""
    from udcbench.runner import accelerate
    from udcbench.models.compiled import Compiler

    notes = [note] if (note := accelerate.choose_memory(model, dataset, device, spec.memory,
                                                        spec.batch_size * spec.eps_batch)) else []
    if not spec.compile:
        return model, notes, [], False
    compiler = _cached(cache, ("compiler",), Compiler) if cache is not None else Compiler()
    model, more, warnings, compiled = accelerate.compile_for_data(
        model, dataset, device, [spec.batch_size, spec.batch_size * spec.eps_batch], compiler, spec.precision)
    return model, notes + more, warnings, compiled


def _identity(spec: RunSpec, info, attack, objective, defense, dataset, device) -> tuple[dict, dict]:
    """(what the run hash covers, the labels written into every row). Settings at their defaults stay out of
    the hash, so runs keep the hashes of earlier versions."""
    weights_id = _weights_id(info)
    if weights_id == "random":
        weights_id = f"random:{spec.seed}"
    defense_record = defense.record(info.name)
    options = dict(info.extra.get("options") or {})
    data_id = dataset.info.identity
    resolved = {"model": info.name, "weights": weights_id, "attack": attack.name, "params": attack.params,
                "objective": objective.name, "defense": defense.spec, "data": data_id, "split": spec.data.split,
                "seed": spec.seed, "threat": spec.threat, "device": device.type}
    if spec.attack.mask is not None:
        mask = spec.attack.mask
        resolved["mask"] = mask if mask.startswith("box:") else "file:" + file_digest(mask)
    if spec.lpips is not None:
        resolved["lpips"] = spec.lpips
    if attack.params.get("surrogate_weights"):
        resolved["surrogate_weights"] = "file:" + file_digest(attack.params["surrogate_weights"])
    if getattr(objective, "target", "input") != "input":
        resolved["target"] = "file:" + file_digest(objective.target)
    if defense_record:
        resolved["defense_params"] = [{k: v for k, v in part.items() if k != "auto"} for part in defense_record]
    if options and options != HASHED_WITHOUT_OPTIONS.get(info.name):
        resolved["model_options"] = options
    for key, default in (("batch_size", 1), ("precision", "fp32"), ("scoring", "float"), ("eps_batch", 1)):
        if getattr(spec, key) != default:
            resolved[key] = getattr(spec, key)
    labels = {"model": info.name, "weights": info.weights, "defense": defense.spec, "threat": spec.threat,
              "defense_params": json.dumps(defense_record, sort_keys=True) if defense_record else None, "eot": None,
              "attack": attack.name, "objective": objective.name, "norm": attack.norm, "mask": spec.attack.mask,
              "eps": attack.params.get("eps"), "alpha": attack.params.get("alpha"),
              "steps": attack.params.get("steps"), "data": data_id, "split": spec.data.split, "seed": spec.seed,
              "device": str(device), "batch_size": spec.batch_size, "precision": spec.precision,
              "scoring": spec.scoring, "eps_batch": spec.eps_batch, "backend": None, "weights_digest": weights_id,
              "attack_settings": describe_settings(dict(spec.attack.params)) or "",
              "model_options": ", ".join(f"{k}={v}" for k, v in sorted(options.items()))}
    return resolved, labels


def _ready_defense(defense, model, dataset, seed: int, device):
    """Move priors to the device and let purify:auto choose its t* on clean images."""
    for component in defense.components:
        if getattr(component, "prior", None) is not None:
            component.prior.to(device)
        if component.name == "purify" and component.t_star is None:  # purify:auto, chosen on clean images
            from udcbench.defenses.noise_level import select_t_star

            select_t_star(component, defense, model, dataset, seed, device)
    return defense


def adaptive_attack_for(attack, defense, eot_draws: int | None):
    """The attack an adaptive adversary runs against `defense`: white-box attacks differentiate through it (BPDA
    where a transform has no gradient) and, for a randomised defense, average over `eot_draws` draws per
    objective evaluation (EOT; default 2, as PROTOCOL.md §8's adaptive run); black-box attacks simply query the
    defended system. Returns (attack, draws)."""
    from udcbench.attacks.adaptive import eot

    if eot_draws is not None and eot_draws < 1:
        raise SpecError(f"--eot must be at least 1 draw, got {eot_draws}")
    white_box = attack.kind.startswith("white-box")
    if not white_box or not defense.randomized:
        if eot_draws not in (None, 1):
            raise SpecError(f"--eot {eot_draws} needs a white-box attack and a randomised defense; "
                            f"{attack.name} ({attack.kind}) against {defense.spec} has nothing to average — drop --eot")
        return attack, 1
    draws = 2 if eot_draws is None else eot_draws
    return (eot(attack, draws) if draws > 1 else attack), draws


def run(spec: RunSpec, out: str | Path | None = None,
        progress: Callable[[int, int, str], None] | None = None, job: Job | None = None) -> pd.DataFrame:
    """Run one benchmark spec; rows go to `out/results.db` (or memory when out is None) and the leaderboard
    is re-rendered into `out`. Returns this run's rows (all images of the selection, resumed ones included)."""
    from udcbench.runner.plan import Group, Plan

    job = job or prepare(spec)  # every check happens before anything is written
    frame = run_plan(Plan(jobs=[job], groups=[Group([job])]), out, progress)
    frame.attrs.update(run_hash=job.run_hash)
    return frame


def run_suite(specs: list[RunSpec], out: str | Path | None = None,
              progress: Callable[[int, int, str], None] | None = None, executor: str = "local",
              address: str | None = None, gpus_per_task: float | None = None, plan=None) -> pd.DataFrame:
    """Run many specs (a suite, or the cross product of a command line) sharing work between them; returns
    the rows of all of them, with counts and the shared-work tally in `.attrs`."""
    from udcbench.runner.plan import make_plan

    plan = plan or make_plan(specs)  # every spec is validated before anything is written
    return run_plan(plan, out, progress, executor=executor, address=address, gpus_per_task=gpus_per_task)


def run_plan(plan, out: str | Path | None = None, progress: Callable[[int, int, str], None] | None = None,
             executor: str = "local", address: str | None = None, gpus_per_task: float | None = None) -> pd.DataFrame:
    from udcbench.runner.executors import EXECUTORS, execute_plan

    if executor not in EXECUTORS:
        raise SpecError(f"unknown executor {executor!r}; use local or ray")
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise SpecError(f"--out {out} is a file; pass a folder")
        out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(None if out is None else out / "results.db")
    try:
        for job in plan.jobs:
            store.register_run(job.run_hash, {"spec": job.spec.to_dict(), "resolved_labels": job.labels})
        stats = execute_plan(plan, store, progress, executor=executor, address=address, gpus_per_task=gpus_per_task)
        rows = store.rows()
        if out is not None:
            leaderboard.write(leaderboard.summarise(rows), out)
    finally:
        store.close()
    keep = pd.Series(False, index=rows.index)
    for job in plan.jobs:
        keep |= (rows["run_hash"] == job.run_hash) & rows["image"].isin(set(job.dataset.names()))
    rows = rows[keep].reset_index(drop=True)
    rows.attrs.update(**stats)
    return rows


def replay(out_dir: str | Path, run_hash: str, image: str) -> dict:
    """Recompute one stored (run, image) from the spec in `out_dir/results.db` — the seeds make it exact — and
    return its images, each (1, 3, H, W) in [0, 1]: degraded, adversarial, restored (f(y)), restored_adv (f(y')),
    defended_adv (the defended output of y'), gt; plus eps, norm and label."""
    from udcbench.report.leaderboard import defense_label, format_eps
    from udcbench.runner.execute import SharedWork, score_batch
    from udcbench.runner.plan import batches
    from udcbench.runner.store import open_existing

    store = open_existing(out_dir)
    try:
        found = store.conn.execute("SELECT spec FROM runs WHERE run_hash = ?", (run_hash,)).fetchone()
    finally:
        store.close()
    if found is None:
        raise SpecError(f"run {run_hash} is not in {out_dir}/results.db; `udcbench leaderboard {out_dir} --format "
                        "csv` lists the runs stored there")
    job = prepare(RunSpec.from_dict(json.loads(found[0])["spec"]))
    for indices, names in batches(job.dataset, job.batch_size):
        if image in names:
            break
    else:
        raise SpecError(f"image {image!r} is not in run {run_hash}'s dataset; its images: "
                        f"{', '.join(job.dataset.names()[:8])}, …")
    samples = [job.dataset[i] for i in indices]
    keep: dict = {}
    score_batch([job], samples, SharedWork(), keep)
    position = names.index(image)
    panel = {key: value[position:position + 1].detach().float().cpu() for key, value in keep.items()}
    eps = job.labels["eps"]
    panel.update(eps=eps, norm=job.attack.norm, label=f"{job.labels['model']} · {job.attack.name} "
                 f"{format_eps(eps, job.attack.norm)} · {defense_label(job.defense.spec, job.labels['defense_params'])}"
                 f" · {job.labels['threat']}")
    return panel
