"""Leaderboards, always recomputed from stored rows: one row per (model, weights, defense, threat, attack,
eps, steps, objective, seed), mean over images. Written as Markdown (tabulate) and CSV, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

KEYS = ["model", "weights", "defense", "threat", "attack", "objective", "eps", "steps", "seed"]
METRICS = [("psnr_clean_gt", "clean PSNR"), ("ssim_clean_gt", "clean SSIM"),
           ("psnr_adv_gt", "attacked PSNR"), ("ssim_adv_gt", "attacked SSIM"),
           ("psnr_adv_clean", "attacked PSNR vs clean out"), ("ssim_adv_clean", "attacked SSIM vs clean out")]
# shown only when some row has them: LPIPS (runs with --lpips) and black-box query counts
OPTIONAL = [("lpips_clean_gt", "clean LPIPS"), ("lpips_adv_gt", "attacked LPIPS"),
            ("lpips_adv_clean", "attacked LPIPS vs clean out"), ("queries", "queries")]
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "queries": 0}


def _metrics(table: pd.DataFrame) -> list[tuple[str, str]]:
    return METRICS + [(m, label) for m, label in OPTIONAL if m in table and table[m].notna().any()]


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


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per configuration; PSNR to 2 decimals, SSIM to 4, in a stable order."""
    if rows.empty:
        return pd.DataFrame(columns=KEYS + ["images"] + [m for m, _ in METRICS])
    frame = rows.copy()
    norms = frame["norm"] if "norm" in frame else pd.Series("linf", index=frame.index)
    frame["eps"] = [format_eps(eps, norm) for eps, norm in zip(frame["eps"], norms)]
    frame["steps"] = ["-" if steps is None or steps != steps else str(int(steps)) for steps in frame["steps"]]
    frame["weights"] = frame["weights"].map(weights_label)
    grouped = frame.groupby(KEYS, sort=True, dropna=False)
    metrics = _metrics(frame)
    table = grouped[[m for m, _ in metrics]].mean()
    table.insert(0, "images", grouped.size())
    table = table.reset_index()
    for metric, _ in metrics:
        table[metric] = table[metric].round(DIGITS[metric.split("_")[0]])
    return table


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_markdown(table: pd.DataFrame) -> str:
    metrics = _metrics(table)
    headers = KEYS + ["images"] + [label for _, label in metrics]
    formats = [""] * (len(KEYS) + 1) + [f".{DIGITS[m.split('_')[0]]}f" for m, _ in metrics]
    cells = table[KEYS + ["images"] + [m for m, _ in metrics]].astype(object)
    cells = cells.where(cells.notna(), None)  # NaN (no LPIPS, no queries) prints as '-'
    body = tabulate(cells.values.tolist(), headers=headers,
                    tablefmt="pipe", floatfmt=formats, missingval="-")
    return ("PSNR in dB against ground truth (clean, attacked) and against the clean output; mean over images. "
            "Attacks crafted on the undefended model (gray-box).\n\n" + body + "\n")


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n")


def write(table: pd.DataFrame, out_dir: str | Path, formats=("md", "csv")) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for fmt in formats:
        path = out_dir / f"leaderboard.{fmt}"
        _atomic_write(path, to_markdown(table) if fmt == "md" else to_csv(table))
        written.append(path)
    return written
