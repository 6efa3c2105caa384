"""Preparation: a RunSpec becomes a ready Job — validated, built, identified and labelled — without writing
anything. The planner (plan.py) prepares every spec of a suite this way before the first row is stored.

    validate   the spec's own values (threat, seed, batch size, precision, memory, scoring, metrics)
    build      device, attack, objective, mask, defense, dataset, model, metrics (shared through `cache`)
    check      what the model, attack and metrics need of the dataset's images
    ready      --memory / --compile applied to the model; the defense's `ready` hook (priors to the device,
               calibration such as purify:auto's t*)
    identity   the run hash and the row labels (identity.py)
"""

from __future__ import annotations

import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.base import AttackKind, format_eps
from udcbench.attacks.objectives import parse_mask
from udcbench.data import load_dataset
from udcbench.defenses import make_defense
from udcbench.errors import SpecError
from udcbench.metrics import base as metric_stage
from udcbench.models import load_model
from udcbench.runner.execute import Job
from udcbench.runner.identity import identity
from udcbench.spec import MEMORY_MODES, PRECISIONS, SCORINGS, THREATS, RunSpec, stable_hash


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


def metric_names(spec: RunSpec) -> list[str]:
    """The extra metrics a spec asks for: --lpips NET (the older spelling of lpips-NET), then --metrics."""
    if spec.lpips is not None and spec.lpips not in ("alex", "vgg"):
        raise SpecError(f"--lpips takes alex or vgg, got {spec.lpips!r}; e.g. --lpips alex")
    return ([f"lpips-{spec.lpips}"] if spec.lpips is not None else []) + list(spec.metrics)


def validate(spec: RunSpec) -> None:
    """The spec's own values, before anything is loaded."""
    if spec.threat not in THREATS:
        raise SpecError(f"threat model {spec.threat!r} is not available; choose one of {', '.join(THREATS)}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or not 0 <= spec.seed < 2 ** 63:
        raise SpecError(f"--seed must be a whole number in [0, 2^63), got {spec.seed}; e.g. --seed 0")
    if not isinstance(spec.batch_size, int) or spec.batch_size < 1:
        raise SpecError(f"--batch-size must be a positive integer, got {spec.batch_size}; e.g. --batch-size 1")
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
    metric_names(spec)
    for radius in spec.radius:
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 <= radius < float("inf"):
            raise SpecError(f"--radius takes L2 radii ≥ 0, got {radius!r}; e.g. --radius 0.1,0.25,0.5")


def certified_radii(spec: RunSpec, defense, dataset) -> tuple[float, ...]:
    """The radii a run certifies: --radius, else a smooth:sigma=auto's radius; refused without a smoothing
    defense, or when its n cannot certify anything for this dataset's image sizes (certify.py)."""
    from udcbench.defenses.certify import check_samples

    smoother = defense.smoother
    if smoother is None:
        if spec.radius:
            raise SpecError(f"--radius certifies a smoothed defense, and {defense.spec!r} has none; add smooth, e.g. "
                            f"--defense smooth:sigma=0.25 (or {defense.spec}+smooth), or drop --radius")
        return ()
    radii = tuple(sorted(set(float(r) for r in spec.radius))) or \
        ((float(smoother.radius),) if smoother.radius is not None else ())
    if radii:
        height, width = max(dataset.image_sizes(), key=lambda size: size[0] * size[1])
        check_samples(smoother.n, smoother.alpha, 3 * height * width, f"{height}×{width} images")
    return radii


def certificate_warnings(defense, radii, dataset) -> list[str]:
    """Radii at which the smoothing's n samples give only the trivial bound (the output range) at its σ."""
    from udcbench.defenses.certify import smallest_n

    smoother = defense.smoother
    if not radii or smoother is None or smoother.sigma is None:
        return []
    height, width = max(dataset.image_sizes(), key=lambda size: size[0] * size[1])
    warnings = []
    for radius in radii:
        needed = smallest_n(smoother.sigma, radius, smoother.alpha, 3 * height * width)
        if needed is None or needed > smoother.n:
            more = f"n ≥ {needed:,}" if needed is not None else "over a million samples"
            warnings.append(f"smooth: at σ={smoother.sigma:g}, radius {radius:g} needs {more} for a non-trivial "
                            f"certificate (n={smoother.n}); its certified PSNR is the bound of the output range "
                            "— raise n or sigma")
    return warnings


def check_inputs(attack, model, dataset, metrics) -> None:
    """Every input the model and the attack need is in the dataset, the attack's budget fits its images and
    every metric can score them — checked on the first sample and the image sizes, before anything is written."""
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
    sizes = sorted(dataset.image_sizes())
    for height, width in sizes:
        attack.check_input((1, first.degraded.shape[0], height, width))
    metric_stage.check_sizes(metrics, sizes, dataset.info.name)


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
    """Validate and resolve a spec (model, weights, attack, defense, data, metrics) without writing anything.

    `cache` (a dict kept across calls) makes the runs of a suite share one model, dataset and defense object per
    distinct configuration — the planner needs that to share work, and purify:auto then calibrates once."""
    validate(spec)
    device = resolve_device(spec.device)
    attack = make_attack(spec.attack.name, **dict(spec.attack.params))
    objective = make_objective(spec.attack.objective)
    objective.check()
    mask = parse_mask(spec.attack.mask)
    metrics = metric_stage.resolve(metric_names(spec), device)
    model_key = ("model", spec.model.name, spec.model.weights, str(device),
                 spec.seed if spec.model.weights == "random" else None,
                 *((spec.memory, spec.batch_size * spec.eps_batch) if spec.memory != "normal" else ()))
    data_key = ("data", spec.data.name, spec.data.split, spec.data.limit)
    defense = make_defense(spec.defense.spec)  # validated before anything is loaded
    dataset = _cached(cache, data_key, lambda: load_dataset(spec.data.name, split=spec.data.split,
                                                            limit=spec.data.limit))
    model = _cached(cache, model_key, lambda: load_model(spec.model.name, weights=spec.model.weights,
                                                         device=device, seed=spec.seed))
    check_inputs(attack, model, dataset, metrics)
    radii = certified_radii(spec, defense, dataset)
    model, notes, warnings, compiled = _cached(cache, ("ready", model_key, data_key, spec.compile),
                                               lambda: _ready_model(spec, model, dataset, device, cache))
    defense = _cached(cache, ("defense", spec.defense.spec, model_key, data_key, spec.seed),
                      lambda: _ready_defense(defense, model, dataset, spec.seed, device))
    resolved, labels = identity(spec, model.info, attack, objective, defense, dataset, device, metrics)
    if radii:
        resolved["radius"] = list(radii)
    if compiled:  # equal to eager within 1e-4 relative, not bit for bit: its rows never merge with eager ones
        resolved["backend"] = labels["backend"] = "compiled"
    adaptive_attack = None
    if spec.threat == "adaptive":
        adaptive_attack, draws = adaptive_attack_for(attack, defense, spec.eot)
        resolved["eot"] = labels["eot"] = draws
    return Job(run_hash=stable_hash(resolved), model=model, attack=attack, objective=objective, defense=defense,
               dataset=dataset, device=device, labels=labels, metrics=metrics, mask=mask,
               adaptive_attack=adaptive_attack, batch_size=spec.batch_size, precision=spec.precision,
               seed=spec.seed, scoring=spec.scoring, mask_spec=spec.attack.mask,
               defense_params=labels["defense_params"], spec=spec,
               warnings=attack_warnings(attack) + warnings + certificate_warnings(defense, radii, dataset),
               notes=notes, radii=radii)


def _ready_model(spec: RunSpec, model, dataset, device, cache):
    """--memory and --compile applied to a loaded model (runner/accelerate.py): (model to run, notes, warnings,
    compiled?). One Compiler serves a whole suite (kept in `cache`)."""
    from udcbench.models.compiled import Compiler
    from udcbench.runner import accelerate

    notes = [note] if (note := accelerate.choose_memory(model, dataset, device, spec.memory,
                                                        spec.batch_size * spec.eps_batch)) else []
    if not spec.compile:
        return model, notes, [], False
    compiler = _cached(cache, ("compiler",), Compiler) if cache is not None else Compiler()
    model, more, warnings, compiled = accelerate.compile_for_data(
        model, dataset, device, [spec.batch_size, spec.batch_size * spec.eps_batch], compiler, spec.precision)
    return model, notes + more, warnings, compiled


def _ready_defense(defense, model, dataset, seed: int, device):
    """The defense's own preparation (defenses/base.py `ready`): networks to the device, calibration."""
    defense.ready(model, dataset, seed, device)
    return defense


def adaptive_attack_for(attack, defense, eot_draws: int | None):
    """The attack an adaptive adversary runs against `defense`: white-box attacks differentiate through it (BPDA
    where a transform has no gradient) and, for a randomised defense, average over `eot_draws` draws per
    objective evaluation (EOT; default 2); black-box attacks simply query the defended system.
    Returns (attack, draws)."""
    from udcbench.attacks.adaptive import eot

    if eot_draws is not None and eot_draws < 1:
        raise SpecError(f"--eot must be at least 1 draw, got {eot_draws}; e.g. --eot 2")
    white_box = AttackKind(attack.kind).white_box
    if not white_box or not defense.randomized:
        if eot_draws not in (None, 1):
            raise SpecError(f"--eot {eot_draws} needs a white-box attack and a randomised defense; "
                            f"{attack.name} ({attack.kind}) against {defense.spec} has nothing to average — drop --eot")
        return attack, 1
    draws = 2 if eot_draws is None else eot_draws
    return (eot(attack, draws) if draws > 1 else attack), draws
