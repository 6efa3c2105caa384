"""Leaderboards, always recomputed from stored rows: one row per run (run hash) — exactly one experiment —
with the mean of every metric over its images. Rows are labelled by the classic columns (model, weights,
defense, threat, attack, objective, eps, steps, seed) and by whichever further settings differ between runs
(data, split, attack settings, mask, EOT draws, batch size, precision, scoring, model options, weights
digest, device; see identity.py). Certified PSNR columns (runs of the smooth defense with --radius) follow their
empirical counterparts: vs ground truth after attacked PSNR, vs the smoothed clean output after the attacked
output vs clean out, by radius (see certified.py). Written as Markdown (tabulate) and CSV, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from udcbench.metrics.base import (CLEAN_LOSS, MAIN_PAIRS, RESTORATION_PAIRS, UNDEFENDED_PAIRS, column_label, digits,
                                   is_metric_column, registered)
from udcbench.report import certified
from udcbench.report.escape import csv_cell, markdown, markdown_cells
from udcbench.report.identity import (IDENTITY, KEYS, RUN, SETTINGS, defense_label, format_eps,  # noqa: F401
                                      label_rows, shared_settings, shown_columns, weights_label)

# shown when some run's attack has no fixed budget (C&W): the size of δ is then the robustness measure
NORMS = [("l2", "‖δ‖₂"), ("linf", "‖δ‖∞")]
COUNTS = [("queries", "queries"), ("iterations", "iterations")]  # black-box query / iteration counts


def _labelled(columns) -> list[tuple[str, str]]:
    return [(column, column_label(column)) for column in columns]


def metric_groups() -> tuple[list, list, list]:
    """(main, undefended, optional) (column, label) lists from the registered metrics: the default metrics'
    clean / attacked / vs-clean-out columns; their undefended columns and the clean PSNR loss (shown when some
    row has a defense); every further metric's columns, then the query counts (shown when some row has them)."""
    metrics = registered()
    main = [f"{m.column}_{pair}" for pair in MAIN_PAIRS for m in metrics if m.default and pair in m.pairs]
    undefended = [f"{m.column}_{pair}" for pair in UNDEFENDED_PAIRS for m in metrics if m.default and pair in m.pairs]
    optional = list(dict.fromkeys(f"{m.column}_{pair}" for m in metrics if not m.default
                                  for pair in RESTORATION_PAIRS if pair in m.pairs))
    return _labelled(main), _labelled(undefended + [CLEAN_LOSS]), _labelled(optional) + COUNTS


def _unregistered(table: pd.DataFrame, known: set) -> list[tuple[str, str]]:
    """Metric columns of rows scored by metrics not installed here (kept, labelled by their column name)."""
    return [(c, c) for c in table.columns if c not in known and is_metric_column(c) and table[c].notna().any()]


def has_defense(table: pd.DataFrame) -> bool:
    return "defense" in table and bool((table["defense"] != "none").any())


def unbudgeted(table: pd.DataFrame) -> bool:
    """True when some row's attack has no fixed budget (its eps label is '-', as for C&W)."""
    return "eps" in table and bool((table["eps"] == "-").any())


def _metrics(table: pd.DataFrame) -> list[tuple[str, str]]:
    main, undefended, optional = metric_groups()
    main = certified.with_companions(main, table, column_label)
    known = {column for metric in registered() for column in metric.columns()} | set(certified.columns(table))

    def present(columns):
        return [(m, label) for m, label in columns if m in table and table[m].notna().any()]

    norms = present(NORMS) if unbudgeted(table) else []
    return (present(undefended) if has_defense(table) else []) + main + norms + present(optional) + \
        _unregistered(table, known)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run hash: its labels (IDENTITY), the image count and the mean of each metric (PSNR to 2
    decimals, SSIM to 4), sorted by the labels."""
    if rows.empty:
        return pd.DataFrame(columns=IDENTITY + ["images"] + [m for m, _ in metric_groups()[0]])
    frame = label_rows(rows)
    if "psnr_clean_gt_undefended" in frame:
        frame[CLEAN_LOSS] = frame["psnr_clean_gt_undefended"] - frame["psnr_clean_gt"]
    metrics = _metrics(frame)
    grouped = frame.groupby(RUN, sort=False)
    table = grouped[[c for c in IDENTITY if c != RUN]].first()
    table["images"] = grouped.size()
    table = table.join(grouped[[m for m, _ in metrics]].mean()).reset_index()
    table = table[IDENTITY + ["images"] + [m for m, _ in metrics]]
    for metric, _ in metrics:
        table[metric] = table[metric].astype(float).round(digits(metric))
    table = table.sort_values(IDENTITY, kind="stable").reset_index(drop=True)
    if certified.columns(frame):  # the smoothing behind the certificates, for the note of to_markdown
        table.attrs["smoothing"] = certified.smoothing(frame)
    return table


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
    headers = markdown_cells([{RUN: "run"}.get(k, k) for k in keys] + ["images"] + [label for _, label in metrics])
    formats = [""] * (len(keys) + 1) + [f".{digits(m)}f" for m, _ in metrics]
    cells = table[keys + ["images"] + [m for m, _ in metrics]].astype(object)
    cells = cells.where(cells.notna(), None)  # NaN (no LPIPS, no queries) prints as '-'
    body = tabulate([markdown_cells(row) for row in cells.values.tolist()], headers=headers,
                    tablefmt="pipe", floatfmt=formats, missingval="-")
    note = ("One row per run (one experiment). PSNR in dB against ground truth (clean, attacked) and against the "
            "clean output; the mean over images of per-image PSNR/SSIM. threat gray-box: attacks crafted on the "
            "undefended model, then defended; adaptive: attacks differentiate through the defense (BPDA, EOT).")
    if unbudgeted(table):
        note += (" Attacks without a fixed budget (eps '-', e.g. C&W) are measured by the size of δ: mean ‖δ‖₂ "
                 "and ‖δ‖∞ over images.")
    shared = shared_settings(table)
    if shared:
        note += " Every row: " + "; ".join(markdown(part) for part in shared) + "."
    if has_defense(table):
        note += (" With a defense, clean/attacked columns are the defended outputs; 'undefended' columns send the "
                 "same inputs through the bare model, and clean PSNR loss = undefended − defended clean PSNR.")
    if certified.columns(table):
        note += markdown(certified.leaderboard_note(table.attrs.get("smoothing", [])))
    text = note + "\n\n" + body + "\n"
    comparison = threat_comparison(table)
    if not comparison.empty:
        text += ("\n## Gray-box vs adaptive\n\nDefended attacked PSNR (dB, vs ground truth) under both threat "
                 "models; a defense is only as strong as its adaptive column.\n\n"
                 + tabulate([markdown_cells(row) for row in comparison.values.tolist()],
                            headers=markdown_cells(comparison.columns), tablefmt="pipe",
                            floatfmt=[".4f" if "SSIM" in c else ".2f" for c in comparison.columns],
                            missingval="-") + "\n")
    return text


def to_csv(table: pd.DataFrame) -> str:
    """The leaderboard as CSV; a text cell a spreadsheet would run as a formula gets a leading ' (escape.py)."""
    safe = table.rename(columns=csv_cell)
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(csv_cell)
    return safe.to_csv(index=False, lineterminator="\n")


def write(table: pd.DataFrame, out_dir: str | Path, formats=("md", "csv")) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for fmt in formats:
        path = out_dir / f"leaderboard.{fmt}"
        write_atomic(path, to_markdown(table) if fmt == "md" else to_csv(table))
        written.append(path)
    return written
