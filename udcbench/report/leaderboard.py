"""Leaderboards, always recomputed from stored rows: one row per run (run hash) — exactly one experiment —
with the mean of every metric over its images. Rows are labelled by the classic columns (model, weights,
defense, threat, attack, objective, eps, steps, seed) and by whichever further settings differ between runs
(data, split, attack settings, mask, EOT draws, batch size, precision, scoring, model options, weights
digest, device; see identity.py). Written as Markdown (tabulate) and CSV, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from udcbench.report.identity import (IDENTITY, KEYS, RUN, SETTINGS, defense_label, format_eps,  # noqa: F401
                                      label_rows, shared_settings, shown_columns, weights_label)

METRICS = [("psnr_clean_gt", "clean PSNR"), ("ssim_clean_gt", "clean SSIM"),
           ("psnr_adv_gt", "attacked PSNR"), ("ssim_adv_gt", "attacked SSIM"),
           ("psnr_adv_clean", "attacked PSNR vs clean out"), ("ssim_adv_clean", "attacked SSIM vs clean out")]
# shown only when some row has a defense: the same inputs through the bare model, and what the defense costs
UNDEFENDED = [("psnr_clean_gt_undefended", "undefended clean PSNR"), ("ssim_clean_gt_undefended", "undefended clean SSIM"),
              ("psnr_adv_gt_undefended", "undefended attacked PSNR"),
              ("ssim_adv_gt_undefended", "undefended attacked SSIM"), ("psnr_clean_loss", "clean PSNR loss")]
# shown only when some row has them: LPIPS (runs with --lpips) and black-box query / iteration counts
OPTIONAL = [("lpips_clean_gt", "clean LPIPS"), ("lpips_adv_gt", "attacked LPIPS"),
            ("lpips_adv_clean", "attacked LPIPS vs clean out"), ("queries", "queries"), ("iterations", "iterations")]
# shown when some run's attack has no fixed budget (C&W): the size of δ is then the robustness measure
NORMS = [("l2", "‖δ‖₂"), ("linf", "‖δ‖∞")]
DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "queries": 0, "iterations": 0, "l2": 4, "linf": 4}


def has_defense(table: pd.DataFrame) -> bool:
    return "defense" in table and bool((table["defense"] != "none").any())


def unbudgeted(table: pd.DataFrame) -> bool:
    """True when some row's attack has no fixed budget (its eps label is '-', as for C&W)."""
    return "eps" in table and bool((table["eps"] == "-").any())


def _metrics(table: pd.DataFrame) -> list[tuple[str, str]]:
    undefended = [(m, label) for m, label in UNDEFENDED if m in table and table[m].notna().any()]
    undefended = undefended if has_defense(table) else []
    optional = [(m, label) for m, label in OPTIONAL if m in table and table[m].notna().any()]
    norms = [(m, label) for m, label in NORMS if m in table and table[m].notna().any()] if unbudgeted(table) else []
    return undefended + METRICS + norms + optional


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run hash: its labels (IDENTITY), the image count and the mean of each metric (PSNR to 2
    decimals, SSIM to 4), sorted by the labels."""
    if rows.empty:
        return pd.DataFrame(columns=IDENTITY + ["images"] + [m for m, _ in METRICS])
    frame = label_rows(rows)
    if "psnr_clean_gt_undefended" in frame:
        frame["psnr_clean_loss"] = frame["psnr_clean_gt_undefended"] - frame["psnr_clean_gt"]
    metrics = _metrics(frame)
    grouped = frame.groupby(RUN, sort=False)
    table = grouped[[c for c in IDENTITY if c != RUN]].first()
    table["images"] = grouped.size()
    table = table.join(grouped[[m for m, _ in metrics]].mean()).reset_index()
    table = table[IDENTITY + ["images"] + [m for m, _ in metrics]]
    for metric, _ in metrics:
        table[metric] = table[metric].astype(float).round(DIGITS[metric.split("_")[0]])
    return table.sort_values(IDENTITY, kind="stable").reset_index(drop=True)


def threat_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Gray-box next to adaptive for every configuration run under both threats: the defended attacked PSNR
    (and SSIM) of each, and how much the adaptive attack takes back. Empty when no configuration has both."""
    if table.empty or "threat" not in table or table["threat"].nunique() < 2:
        return pd.DataFrame()
    keys = [k for k in IDENTITY if k not in ("threat", "eot", RUN) and k in table]
    unique = table[~table.duplicated(keys + ["threat"], keep=False)]
    gray = unique[unique["threat"] == "gray-box"].set_index(keys)
    adaptive = unique[unique["threat"] == "adaptive"].set_index(keys)
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
    frame = frame.reset_index()
    constant = [k for k in keys if k not in KEYS and frame[k].nunique(dropna=False) <= 1]
    return frame.drop(columns=constant)


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
    keys = shown_columns(table)
    headers = [{RUN: "run"}.get(k, k) for k in keys] + ["images"] + [label for _, label in metrics]
    formats = [""] * (len(keys) + 1) + [f".{DIGITS[m.split('_')[0]]}f" for m, _ in metrics]
    cells = table[keys + ["images"] + [m for m, _ in metrics]].astype(object)
    cells = cells.where(cells.notna(), None)  # NaN (no LPIPS, no queries) prints as '-'
    body = tabulate(cells.values.tolist(), headers=headers,
                    tablefmt="pipe", floatfmt=formats, missingval="-")
    note = ("One row per run (one experiment). PSNR in dB against ground truth (clean, attacked) and against the "
            "clean output; the mean over images of per-image PSNR/SSIM. threat gray-box: attacks crafted on the "
            "undefended model, then defended; adaptive: attacks differentiate through the defense (BPDA, EOT).")
    if unbudgeted(table):
        note += (" Attacks without a fixed budget (eps '-', e.g. C&W) are measured by the size of δ: mean ‖δ‖₂ "
                 "and ‖δ‖∞ over images.")
    shared = shared_settings(table)
    if shared:
        note += " Every row: " + "; ".join(shared) + "."
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
