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


def format_eps(eps: float) -> str:
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
    frame["eps"] = frame["eps"].map(format_eps)
    frame["weights"] = frame["weights"].map(weights_label)
    grouped = frame.groupby(KEYS, sort=True, dropna=False)
    table = grouped[[m for m, _ in METRICS]].mean()
    table.insert(0, "images", grouped.size())
    table = table.reset_index()
    for metric, _ in METRICS:
        table[metric] = table[metric].round(2 if metric.startswith("psnr") else 4)
    return table


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_markdown(table: pd.DataFrame) -> str:
    headers = KEYS + ["images"] + [label for _, label in METRICS]
    body = tabulate(table.values.tolist(), headers=headers, tablefmt="pipe", floatfmt=("", "", "", "", "", "", "",
                    "", "", "", ".2f", ".4f", ".2f", ".4f", ".2f", ".4f"))
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
