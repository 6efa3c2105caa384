"""The leaderboard entry of a standard evaluation (`udcbench evaluate`, runner/standard.py), computed from the
stored rows of its runs: `evaluation.json` (everything a results table of many labs compares, and the
provenance to check it) and `evaluation.md` (a header and one Markdown table row to paste into a shared table).

Robust numbers follow the protocol's worst case: per image, each metric's minimum over the clean output (δ = 0)
and the output of every attack marked robust (all inside the protocol's L∞ ball), then the mean over images.
PSNR and SSIM are against the ground truth, of the evaluated system's outputs (through the defense, if any).

Everything under "run" (when, how long) changes between reruns; everything else is a function of the stored rows
and the protocol, so the same seed, data, system, device and batch size give the same JSON outside "run".
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from udcbench.errors import StoreError
from udcbench.report.escape import markdown_cells
from udcbench.report.identity import defense_label
from udcbench.report.leaderboard import write_atomic
from udcbench.spec import stable_hash

# decimals kept in the entry: PSNR in dB, SSIM, perturbation norms, query counts
DECIMALS = {"psnr": 4, "ssim": 6, "norm": 6, "count": 2}


def _round(value, kind: str):
    value = float(value)
    return None if math.isnan(value) else round(value, DECIMALS[kind])


def _per_run(rows: pd.DataFrame, evaluation) -> dict[str, pd.DataFrame]:
    """Each protocol attack's rows, indexed by image; every run must hold the same images."""
    frames = {key: rows[rows["run_hash"] == job.run_hash].set_index("image").sort_index()
              for key, job in evaluation.runs.items()}
    expected = sorted(evaluation.first.dataset.names())
    for key, frame in frames.items():
        if list(frame.index) != expected:
            raise StoreError(f"run {evaluation.runs[key].run_hash} ({key}) holds {len(frame)} of the "
                             f"{len(expected)} images; run the same command again to finish it")
    return frames


def _check_budget(frames: dict, protocol) -> None:
    """Stored robust perturbations lie inside the protocol's ball (float64 ‖δ‖∞, a rounding's slack)."""
    limit = protocol.budget_value * (1 + 1e-6) + 1e-9
    for attack in protocol.attacks:
        if attack.robust and (frames[attack.key]["linf"] > limit).any():
            raise StoreError(f"{attack.key}: a stored perturbation exceeds L∞ {protocol.budget}; the rows cannot "
                             "enter the robust worst case — report this as a bug")


def worst_case(frames: dict, protocol, metric: str) -> tuple[pd.Series, dict]:
    """Per image the minimum of `metric` over the clean output and every robust attack; and how many images
    each of them decided (ties go to the first: clean, then the protocol's order)."""
    first = next(iter(frames.values()))
    candidates = {"clean": first[f"{metric}_clean_gt"]}
    candidates.update({a.key: frames[a.key][f"{metric}_adv_gt"] for a in protocol.attacks if a.robust})
    table = pd.DataFrame(candidates)
    decided = table.idxmin(axis=1).value_counts()
    return table.min(axis=1), {key: int(decided.get(key, 0)) for key in candidates}


def _attack_entry(attack, job, frame: pd.DataFrame) -> dict:
    found = {"attack": attack.name, "params": dict(attack.params), "robust": attack.robust, "run": job.run_hash,
             "threat": job.labels["threat"], "eot": job.labels.get("eot"),
             "psnr": _round(frame["psnr_adv_gt"].mean(), "psnr"), "ssim": _round(frame["ssim_adv_gt"].mean(), "ssim"),
             "psnr_vs_clean_output": _round(frame["psnr_adv_clean"].mean(), "psnr"),
             "ssim_vs_clean_output": _round(frame["ssim_adv_clean"].mean(), "ssim"),
             "linf": _round(frame["linf"].mean(), "norm"), "l2": _round(frame["l2"].mean(), "norm")}
    if frame["queries"].notna().any():
        found["queries"] = _round(frame["queries"].mean(), "count")
    return found


def _one(frame: pd.DataFrame, column: str):
    values = sorted({str(v) for v in frame[column].dropna()})
    return ", ".join(values) if values else None


def entry(rows: pd.DataFrame, evaluation, generated_at: str | None = None) -> dict:
    """The leaderboard entry of `evaluation` from its stored `rows` (run_plan's frame or store.rows())."""
    protocol, first = evaluation.protocol, evaluation.first
    frames = _per_run(rows, evaluation)
    _check_budget(frames, protocol)
    clean = next(iter(frames.values()))
    robust_psnr, decided_psnr = worst_case(frames, protocol, "psnr")
    robust_ssim, decided_ssim = worst_case(frames, protocol, "ssim")
    ours = rows[rows["run_hash"].isin({job.run_hash for job in evaluation.runs.values()})]
    labels, spec = first.labels, first.spec
    names = sorted(first.dataset.names())
    complete = evaluation.limit is None
    times = ours[["time_clean_s", "time_attack_s", "time_eval_s"]].sum().sum()
    return {
        "protocol": {"name": protocol.name, "digest": protocol.digest, "definition": protocol.definition()},
        "system": {"model": labels["model"], "model_requested": evaluation.requested_model,
                   "model_options": labels["model_options"] or None, "weights": weights_file(labels["weights"]),
                   "weights_digest": labels["weights_digest"],
                   "defense": defense_label(labels["defense"], labels["defense_params"]),
                   "threat": labels["threat"]},
        "data": {"name": data_label(first.dataset.info.name), "identity": labels["data"], "split": labels["split"],
                 "images": len(names), "image_names_digest": stable_hash({"images": names}),
                 "limit": evaluation.limit},
        "complete": complete,
        "results": {
            "clean": {"psnr": _round(clean["psnr_clean_gt"].mean(), "psnr"),
                      "ssim": _round(clean["ssim_clean_gt"].mean(), "ssim")},
            "robust": {"psnr": _round(robust_psnr.mean(), "psnr"), "ssim": _round(robust_ssim.mean(), "ssim"),
                       "budget": f"linf {protocol.budget}",
                       "over": ["clean"] + [a.key for a in protocol.attacks if a.robust],
                       "worst_for_images": {"psnr": decided_psnr, "ssim": decided_ssim}},
            "attacks": {a.key: _attack_entry(a, evaluation.runs[a.key], frames[a.key]) for a in protocol.attacks},
        },
        "settings": {"seed": spec.seed, "objective": protocol.objective, "batch_size": spec.batch_size,
                     "precision": spec.precision, "scoring": spec.scoring, "device": _one(ours, "device")},
        "versions": {"udcbench": _one(ours, "udcbench_version"), "torch": _one(ours, "torch_version"),
                     "python": platform.python_version()},
        "run": {"generated_at": generated_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows_computed": [str(ours["created_at"].min()), str(ours["created_at"].max())],
                "compute_time_s": round(float(times), 1)},
    }


def data_label(name: str) -> str:
    """The data as an entry names it: a registered name as it is, a folder by its own name (never the local path
    above it), FORMAT:ROOT as FORMAT:NAME."""
    fmt, colon, root = name.partition(":")
    if colon and "/" not in fmt and "\\" not in fmt:
        folders, hash_, options = root.partition("#")
        return f"{fmt}:{','.join(Path(part).name for part in folders.split(','))}{hash_}{options}"
    return Path(name).name if ("/" in name or "\\" in name) else name


def weights_file(label: str) -> str:
    """The weights as an entry names them: 'bundled:NAME', a checkpoint's file name (never the local path),
    'none' or 'random'."""
    if label.startswith("bundled:") or label in ("random", "none") or label.startswith("none"):
        return label
    return Path(label).name


COLUMNS = ("model", "weights", "weights digest", "defense", "threat", "data", "images", "protocol", "clean PSNR",
           "clean SSIM", "robust PSNR", "robust SSIM", "seed", "versions", "device")


def row(entry: dict) -> list:
    """The entry's cells, in COLUMNS order."""
    system, data, results = entry["system"], entry["data"], entry["results"]
    images = str(data["images"]) if entry["complete"] else f"{data['images']} (PARTIAL: --limit {data['limit']})"
    versions = " · ".join(f"{name} {entry['versions'][name]}" for name in ("udcbench", "torch", "python"))
    model = system["model"] + (f" ({system['model_options']})" if system["model_options"] else "")
    return [model, system["weights"], system["weights_digest"], system["defense"], system["threat"],
            f"{data['name']}/{data['split']}", images, f"{entry['protocol']['name']} ({entry['protocol']['digest']})",
            f"{results['clean']['psnr']:.2f}", f"{results['clean']['ssim']:.4f}",
            f"{results['robust']['psnr']:.2f}", f"{results['robust']['ssim']:.4f}",
            str(entry["settings"]["seed"]), versions, entry["settings"]["device"]]


def table_lines(entry: dict) -> list[str]:
    """The Markdown table: header, separator, the entry's row."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(COLUMNS), line(["---"] * len(COLUMNS)), line(markdown_cells(row(entry)))]


def to_markdown(entry: dict) -> str:
    protocol, robust = entry["protocol"], entry["results"]["robust"]
    over = ", ".join(robust["over"][1:])
    attacks = ", ".join(attack["key"] for attack in protocol["definition"]["attacks"])
    lines = [f"# udcbench evaluation: {protocol['name']}", ""]
    if not entry["complete"]:
        lines += [f"**PARTIAL ENTRY** (--limit {entry['data']['limit']}): not the whole {entry['data']['split']} "
                  "split, not comparable with other entries; do not publish it.", ""]
    lines += [f"Protocol {protocol['name']} (definition digest {protocol['digest']}): "
              f"{attacks}; "
              f"seed {entry['settings']['seed']}, objective {entry['settings']['objective']}. Robust PSNR/SSIM: per "
              f"image the minimum over the clean output and {over} (all within {robust['budget']}), then the mean "
              "over images; PSNR/SSIM against the ground truth. Per-attack numbers are in evaluation.json.", "",
              *table_lines(entry), ""]
    return "\n".join(lines)


def write(entry: dict, out: Path) -> tuple[Path, Path]:
    """evaluation.json and evaluation.md in `out`, each written atomically."""
    text = json.dumps(entry, indent=2, ensure_ascii=False) + "\n"
    return write_atomic(out / "evaluation.json", text), write_atomic(out / "evaluation.md", to_markdown(entry))
