"""Leaderboards, always recomputed from stored rows: one row per (model, weights, defense, threat, attack,
eps, steps, objective, seed), mean over images. Written as Markdown (tabulate) and CSV, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

KEYS = ["model", "weights", "defense", "threat", "attack", "objective", "eps", "steps", "seed"]
METRICS = [("psnr_clean_gt", "clean PSNR"), ("ssim_clean_gt", "clean SSIM"),
           ("psnr_adv_gt", "attacked PSNR"), ("ssim_adv_gt", "attacked SSIM"),
           ("psnr_adv_clean", "attacked PSNR vs clean out"), ("ssim_adv_clean", "attacked SSIM vs clean out")]
# shown only when some row has a defense: the same inputs through the bare model, and what the defense costs
UNDEFENDED = [("psnr_clean_gt_undefended", "undefended clean PSNR"), ("ssim_clean_gt_undefended", "undefended clean SSIM"),
              ("psnr_adv_gt_undefended", "undefended attacked PSNR"),
              ("ssim_adv_gt_undefended", "undefended attacked SSIM"), ("psnr_clean_loss", "clean PSNR loss")]
# shown only when some row has them: LPIPS (runs with --lpips) and black-box query counts
OPTIONAL = [("lpips_clean_gt", "clean LPIPS"), ("lpips_adv_gt", "attacked LPIPS"),
            ("lpips_adv_clean", "attacked LPIPS vs clean out"), ("queries", "queries")]
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "queries": 0}


def has_defense(table: pd.DataFrame) -> bool:
    return "defense" in table and bool((table["defense"] != "none").any())


def _metrics(table: pd.DataFrame) -> list[tuple[str, str]]:
    undefended = [(m, label) for m, label in UNDEFENDED if m in table and table[m].notna().any()]
    undefended = undefended if has_defense(table) else []
    return undefended + METRICS + [(m, label) for m, label in OPTIONAL if m in table and table[m].notna().any()]


def defense_label(spec: str, params: str | None) -> str:
    """The defense spec, with the t* that purify:auto chose: 'purify:auto+ft' → 'purify:auto(t*=30)+ft'."""
    if not isinstance(params, str) or "auto" not in spec:
        return spec
    chosen = [part["t_star"] for part in json.loads(params) if part.get("component") == "purify" and "auto" in part]
    parts = spec.split("+")
    for index, part in enumerate(parts):
        if part.startswith("purify:") and "auto" in part and chosen:
            parts[index] = f"{part}(t*={chosen.pop(0)})"
    return "+".join(parts)


def format_eps(eps: float | None, norm: str | None = "linf") -> str:
    """8/255 for L∞ budgets on the 1/255 grid, 'L2 1' for L2 budgets, '-' for attacks without one (C&W)."""
    if eps is None or eps != eps:  # None or NaN
        return "-"
    if norm == "l2":
        return f"L2 {eps:.4g}"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def weights_label(label: str) -> str:
    if label == "random":
        return "RANDOM (untrained)"
    if label.startswith("bundled:"):
        return "bundled"
    if label.startswith("none"):
        return "none"
    return Path(label).name


def label_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """A copy of stored rows with the leaderboard's labels: eps as '8/255' / 'L2 1' / '-', steps as '20' / '-',
    weights as 'bundled' / 'RANDOM (untrained)' / the file name, defense with the t* that purify:auto chose."""
    frame = rows.copy()
    norms = frame["norm"] if "norm" in frame else pd.Series("linf", index=frame.index)
    frame["eps"] = [format_eps(eps, norm) for eps, norm in zip(frame["eps"], norms)]
    frame["steps"] = ["-" if steps is None or steps != steps else str(int(steps)) for steps in frame["steps"]]
    frame["weights"] = frame["weights"].map(weights_label)
    if "defense_params" in frame:
        frame["defense"] = [defense_label(d, p) for d, p in zip(frame["defense"], frame["defense_params"])]
    return frame


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per configuration; PSNR to 2 decimals, SSIM to 4, in a stable order."""
    if rows.empty:
        return pd.DataFrame(columns=KEYS + ["images"] + [m for m, _ in METRICS])
    frame = label_rows(rows)
    if "psnr_clean_gt_undefended" in frame:
        frame["psnr_clean_loss"] = frame["psnr_clean_gt_undefended"] - frame["psnr_clean_gt"]
    grouped = frame.groupby(KEYS, sort=True, dropna=False)
    metrics = _metrics(frame)
    table = grouped[[m for m, _ in metrics]].mean()
    table.insert(0, "images", grouped.size())
    table = table.reset_index()
    for metric, _ in metrics:
        table[metric] = table[metric].round(DIGITS[metric.split("_")[0]])
    return table


def threat_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Gray-box next to adaptive for every configuration run under both threats: the defended attacked PSNR
    (and SSIM) of each, and how much the adaptive attack takes back. Empty when no configuration has both."""
    if table.empty or "threat" not in table or table["threat"].nunique() < 2:
        return pd.DataFrame()
    keys = [k for k in KEYS if k != "threat"]
    gray = table[table["threat"] == "gray-box"].set_index(keys)
    adaptive = table[table["threat"] == "adaptive"].set_index(keys)
    both = gray.index.intersection(adaptive.index)
    if not len(both):
        return pd.DataFrame()
    frame = pd.DataFrame(index=both)
    if "psnr_adv_gt_undefended" in gray:
        frame["undefended attacked PSNR"] = gray.loc[both, "psnr_adv_gt_undefended"]
    frame["gray-box PSNR"] = gray.loc[both, "psnr_adv_gt"]
    frame["adaptive PSNR"] = adaptive.loc[both, "psnr_adv_gt"]
    frame["adaptive − gray-box"] = (frame["adaptive PSNR"] - frame["gray-box PSNR"]).round(2)
    frame["gray-box SSIM"] = gray.loc[both, "ssim_adv_gt"]
    frame["adaptive SSIM"] = adaptive.loc[both, "ssim_adv_gt"]
    return frame.reset_index()


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: readers see the old file or
    the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_markdown(table: pd.DataFrame) -> str:
    metrics = _metrics(table)
    headers = KEYS + ["images"] + [label for _, label in metrics]
    formats = [""] * (len(KEYS) + 1) + [f".{DIGITS[m.split('_')[0]]}f" for m, _ in metrics]
    cells = table[KEYS + ["images"] + [m for m, _ in metrics]].astype(object)
    cells = cells.where(cells.notna(), None)  # NaN (no LPIPS, no queries) prints as '-'
    body = tabulate(cells.values.tolist(), headers=headers,
                    tablefmt="pipe", floatfmt=formats, missingval="-")
    note = ("PSNR in dB against ground truth (clean, attacked) and against the clean output; mean over images. "
            "threat gray-box: attacks crafted on the undefended model, then defended; adaptive: attacks "
            "differentiate through the defense (BPDA, EOT).")
    if has_defense(table):
        note += (" With a defense, clean/attacked columns are the defended outputs; 'undefended' columns send the "
                 "same inputs through the bare model, and clean PSNR loss = undefended − defended clean PSNR.")
    text = note + "\n\n" + body + "\n"
    comparison = threat_comparison(table)
    if not comparison.empty:
        text += ("\n## Gray-box vs adaptive\n\nDefended attacked PSNR (dB, vs ground truth) under both threat "
                 "models; a defense is only as strong as its adaptive column.\n\n"
                 + tabulate(comparison.values.tolist(), headers=list(comparison.columns), tablefmt="pipe",
                            floatfmt=[".4f" if "SSIM" in c else ".2f" for c in comparison.columns],
                            missingval="-") + "\n")
    return text


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n")


def write(table: pd.DataFrame, out_dir: str | Path, formats=("md", "csv")) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for fmt in formats:
        path = out_dir / f"leaderboard.{fmt}"
        write_atomic(path, to_markdown(table) if fmt == "md" else to_csv(table))
        written.append(path)
    return written
