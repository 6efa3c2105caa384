"""What a run is: the settings its hash covers and the labels written into each of its rows.

The hash covers everything that decides a row's numbers (spec.py); settings at their defaults stay out of it,
so runs keep the hashes of earlier versions (and their stored rows resume).
"""

from __future__ import annotations

import json

from udcbench.models import weights_id
from udcbench.spec import RunSpec, describe_settings, file_digest

# configurations whose runs were hashed before model options existed, with the options they were built with:
# at these values the options stay out of the hash, so their stored runs resume (uformer-t/-s/-b were built at
# train_patch 256 then and default to 128 now: their hashes always include the options)
HASHED_WITHOUT_OPTIONS = {"uformer-nano": {"train_patch": 128}}


def metrics_identity(metrics) -> dict:
    """The scored metrics beyond the default ones, as the hash records them: LPIPS as {'lpips': net} (as
    --lpips always was), every other one by name under 'metrics'."""
    extra = [m.name for m in metrics if not m.default]
    found = {}
    lpips = [name for name in extra if name.startswith("lpips-")]
    if lpips:
        found["lpips"] = lpips[0].partition("-")[2]
    others = sorted(name for name in extra if not name.startswith("lpips-"))
    if others:
        found["metrics"] = others
    return found


def _resolved(spec: RunSpec, info, attack, objective, defense, data_id: str, device, metrics, weights: str,
              defense_record, options: dict) -> dict:
    resolved = {"model": info.name, "weights": weights, "attack": attack.name, "params": attack.params,
                "objective": objective.name, "defense": defense.spec, "data": data_id, "split": spec.data.split,
                "seed": spec.seed, "threat": spec.threat, "device": device.type}
    if spec.attack.mask is not None:
        mask = spec.attack.mask
        resolved["mask"] = mask if mask.startswith("box:") else "file:" + file_digest(mask)
    resolved.update(metrics_identity(metrics))
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
    return resolved


def identity(spec: RunSpec, info, attack, objective, defense, dataset, device, metrics) -> tuple[dict, dict]:
    """(what the run hash covers, the labels written into every row)."""
    weights = weights_id(info, spec.seed)
    defense_record = defense.record(info.name)
    options = dict(info.extra.get("options") or {})
    data_id = dataset.info.identity
    resolved = _resolved(spec, info, attack, objective, defense, data_id, device, metrics, weights,
                         defense_record, options)
    labels = {"model": info.name, "weights": info.weights, "defense": defense.spec, "threat": spec.threat,
              "defense_params": json.dumps(defense_record, sort_keys=True) if defense_record else None, "eot": None,
              "attack": attack.name, "objective": objective.name, "norm": attack.norm, "mask": spec.attack.mask,
              "eps": attack.params.get("eps"), "alpha": attack.params.get("alpha"),
              "steps": attack.params.get("steps"), "data": data_id, "split": spec.data.split, "seed": spec.seed,
              "device": str(device), "batch_size": spec.batch_size, "precision": spec.precision,
              "scoring": spec.scoring, "eps_batch": spec.eps_batch, "backend": None, "weights_digest": weights,
              "attack_settings": describe_settings(dict(spec.attack.params)) or "",
              "model_options": ", ".join(f"{k}={v}" for k, v in sorted(options.items()))}
    return resolved, labels
