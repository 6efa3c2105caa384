"""Pivot tables of one metric: rows and columns are any of the stored dimensions (model, defense, attack, eps,
...), each cell the mean ± sample std over images. Rendered as Markdown, CSV, LaTeX (booktabs) and HTML.

    table = pivot(store.rows(), rows_by=["model", "defense"], cols_by=["attack", "eps"], metric="psnr_gt")
    print(to_latex(table))

A dimension that is in neither rows nor columns must be single-valued inside every cell, and every cell must
hold exactly one run (run hash); otherwise the cell would average different experiments, and `pivot` says
which dimension to add or filter on. With attacked PSNR as the metric and rows of a certified smooth run, a
`bound` column dimension puts certified PSNR at each radius ('cert@0.25') beside the attacked value (certified.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pandas as pd

from udcbench.errors import SpecError, UnknownNameError
from udcbench.metrics.base import CLEAN_LOSS, column_metric, description, digits, higher_is_better  # noqa: F401
from udcbench.metrics.base import is_metric_column, registered, short_names
from udcbench.report import certified
from udcbench.report.identity import DEFAULT_LABELS, label_rows
from udcbench.report.names import Names, did_you_mean, relabel

DIMENSIONS = ("model", "weights", "defense", "threat", "attack", "objective", "eps", "steps", "seed", "data",
              "split", "norm", "eot", "mask", "settings", "batch_size", "eps_batch", "precision", "backend", "scoring",
              "model_options", "weights_digest", "device", "run", certified.BOUND)
# settings added in 0.2: left out of captions at their defaults (scoring is always stated)
NEW_DIMENSIONS = ("settings", "batch_size", "eps_batch", "precision", "backend", "model_options", "device")
DEFAULT_ROWS = ("model", "defense")
DEFAULT_COLUMNS = ("attack", "eps")
# measured columns that belong to no metric: timings, objective values, counts, the size of δ
_OTHER_MEASURES = re.compile(r"^(time|objective)_|^(queries|linf|l2|iterations)$")


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # sample std (ddof=1) over images; 0 for a single image
    images: int


@dataclass(frozen=True)
class PivotTable:
    name: str  # the metric as asked for (psnr_gt); names the LaTeX label and the default file
    metric: str  # the stored column (psnr_adv_gt)
    rows_by: tuple[str, ...]
    cols_by: tuple[str, ...]
    row_keys: tuple[tuple[str, ...], ...]
    col_keys: tuple[tuple[str, ...], ...]
    cells: dict  # (row key, column key) -> Cell; absent combinations are missing
    best: frozenset  # (row key, column key) of the best cell(s) of each column
    caption: str
    digits: int
    per_row: dict  # threat / seed when they are not pivot dimensions: name -> {row key: label}
    names: Names | None = None  # display names (names.py): the labels above are shown ones; None: raw labels
    label: str | None = None  # the LaTeX \label key; None: tab:udcbench-NAME

    def text(self, row: tuple, col: tuple, plus_minus: str = "±") -> str | None:
        cell = self.cells.get((row, col))
        if cell is None:
            return None
        return f"{cell.mean:.{self.digits}f} {plus_minus} {cell.std:.{self.digits}f}"


def metric_columns(rows: pd.DataFrame | None = None) -> list[str]:
    """Columns that hold a measure: every registered metric's columns, the clean PSNR loss, further metric
    columns present in `rows`, and the timings, objective values, query counts and ‖δ‖ columns."""
    from udcbench.runner.store import COLUMN_NAMES

    names = list(COLUMN_NAMES) + [c for m in registered() for c in m.columns()] + [CLEAN_LOSS]
    names += [] if rows is None else list(rows.columns)
    return list(dict.fromkeys(n for n in names if is_metric_column(n) or n == CLEAN_LOSS or _OTHER_MEASURES.match(n)))


def resolve_metric(name: str, rows: pd.DataFrame | None = None) -> str:
    """A short name (psnr_gt, ssim_gt, lpips_gt, psnr_clean_out, clean_psnr_gt, cert@0.25, ...) or a metric
    column -> the column."""
    names = {**short_names(), **certified.short_names(rows)}
    column = certified.parse_short(name) or names.get(name, name)
    certified.require(column, rows)
    if column not in metric_columns(rows):
        hint = did_you_mean(name, list(names) + metric_columns(rows))
        raise UnknownNameError(f"unknown metric {name!r}{hint}; use one of {', '.join(names)} or a metric "
                               f"column: {', '.join(metric_columns(rows))}")
    return column


def _label(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dimension_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with every dimension as a label string ('8/255', '20', '0', '-' for none)."""
    frame = label_rows(rows)
    frame["run"] = frame["run_hash"]
    for dimension in DIMENSIONS:
        frame[dimension] = frame[dimension].map(_label) if dimension in frame else "-"
    if "psnr_clean_gt_undefended" in frame:
        frame[CLEAN_LOSS] = frame["psnr_clean_gt_undefended"] - frame["psnr_clean_gt"]
    return frame


def parse_where(items: list[str] | tuple[str, ...] | None) -> dict[str, set[str]]:
    """['eps=8/255', 'defense=none', 'defense=jpeg:75'] -> {eps: {8/255}, defense: {none, jpeg:75}}; the
    values of one key are alternatives, different keys must all hold."""
    filters: dict[str, set[str]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key not in DIMENSIONS:
            raise SpecError(f"--where {item!r}: unknown dimension {key!r}{did_you_mean(key, DIMENSIONS)}; "
                            f"dimensions: {', '.join(DIMENSIONS)}")
        if not sep:
            raise SpecError(f"cannot read --where {item!r}; write DIMENSION=VALUE with DIMENSION one of "
                            f"{', '.join(DIMENSIONS)}, e.g. --where eps=8/255")
        filters.setdefault(key, set()).add(value.strip())
    return filters


def filter_rows(frame: pd.DataFrame, filters: dict[str, set[str]]) -> pd.DataFrame:
    for key, values in filters.items():
        present = set(frame[key])
        missing = sorted(values - present)
        if missing:
            raise SpecError(f"no selected row has {key}={' or '.join(missing)}; {key} takes "
                            f"{', '.join(sort_labels(key, present))} — fix the --where filter")
        frame = frame[frame[key].isin(values)]
    return frame


def _natural(text: str) -> tuple:
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def sort_key(dimension: str, label: str) -> tuple:
    if dimension == "eps":  # L∞ by size, then L2 by size, then attacks without a budget
        if label == "-":
            return (2, 0.0, label)
        try:
            if label.startswith("L2 "):
                return (1, float(label[3:]), label)
            numerator, _, denominator = label.partition("/")
            return (0, float(numerator) / float(denominator or 1), label)
        except ValueError:
            return (3, 0.0, label)
    first = {"defense": "none", "threat": "gray-box", certified.BOUND: certified.ATTACKED}.get(dimension)
    return (label != first,) + _natural(label)


def sort_labels(dimension: str, labels) -> list[str]:
    return sorted(labels, key=lambda label: sort_key(dimension, label))


def _key_order(dims: tuple[str, ...]):
    return lambda key: tuple(sort_key(d, v) for d, v in zip(dims, key))


def _dimensions(names, option: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in names if n.strip())
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        which = "; ".join(f"unknown dimension {n!r}{did_you_mean(n, DIMENSIONS)}" for n in unknown)
        raise SpecError(f"{option} {','.join(names)}: {which}; dimensions: {', '.join(DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise SpecError(f"{option} {','.join(names)}: repeated dimension; name each once")
    return names


def _layout(frame: pd.DataFrame, rows_by, cols_by) -> tuple[tuple[str, ...], tuple[str, ...]]:
    cols = _dimensions(DEFAULT_COLUMNS if cols_by is None else cols_by, "--cols")
    if rows_by is None:
        extra = ("threat",) if frame["threat"].nunique() > 1 else ()
        rows_by = [d for d in DEFAULT_ROWS + extra if d not in cols]
    rows = _dimensions(rows_by, "--rows")
    if not rows or not cols:
        raise SpecError(f"a table needs at least one dimension in --rows and one in --cols; got rows "
                        f"{','.join(rows) or '(none)'}, cols {','.join(cols) or '(none)'}")
    both = [d for d in rows if d in cols]
    if both:
        raise SpecError(f"{', '.join(both)} is in both --rows and --cols; keep it in one of them")
    return rows, cols


def _check_single_experiment(frame: pd.DataFrame, pivot_dims: tuple[str, ...]) -> None:
    grouped = frame.groupby(list(pivot_dims), sort=False)
    problems = []
    for dimension in DIMENSIONS:
        if dimension in pivot_dims or not (grouped[dimension].nunique() > 1).any():
            continue
        if dimension == "run" and problems:
            continue  # the runs differ in a named setting already reported
        values = sort_labels(dimension, set(frame[dimension]))
        example = next(v for v in values if v != "-")
        problems.append(f"{dimension} takes {', '.join(values)} within one cell (add it to --rows or --cols, "
                        f"or filter with --where {dimension}={example})")
    if problems:
        raise SpecError("the table would average different experiments: " + "; ".join(problems))


def _as_is(dimension: str, label: str) -> str:
    return label


def _varying(frame: pd.DataFrame, dimension: str, pivot_dims: tuple[str, ...], show=_as_is) -> str:
    """'steps by attack: cw 100, pgd 20' for a dimension that is fixed within each cell but not overall."""
    for by in pivot_dims:
        if (frame.groupby(by)[dimension].nunique() <= 1).all():
            pairs = frame.drop_duplicates(by).set_index(by)[dimension]
            return f"{dimension} by {by}: " + ", ".join(f"{show(by, k)} {show(dimension, pairs[k])}"
                                                       for k in sort_labels(by, pairs.index))
    values = sort_labels(dimension, set(frame[dimension]))
    return f"{dimension} {', '.join(show(dimension, v) for v in values)} (one per cell)"


def _caption(frame, metric: str, cells: dict, pivot_dims: tuple[str, ...], bold: bool, show=_as_is) -> str:
    """What the table shows, then every setting it does not pivot on; labels as `show` names them."""
    text = certified.describe(metric, frame) or description(metric)
    if (frame["defense"] != "none").any() and certified.certified_radius(metric) is None:
        text += " (the defended output where a defense is set)"
    counts = sorted({cell.images for cell in cells.values()})
    spread = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    parts = [f"{text}, mean ± std over {spread} image{'s' if counts[-1] > 1 else ''}"]
    parts += [note for note in [certified.beside_note(frame, metric)] if note]
    for dimension, name in (("threat", "threat model"), ("seed", "seed")):
        values = sort_labels(dimension, set(frame[dimension]))
        parts.append(f"{name}{'s' if len(values) > 1 else ''} {', '.join(show(dimension, v) for v in values)}")
    for dimension in DIMENSIONS:
        if dimension in ("threat", "seed", "run", "weights_digest") or dimension in pivot_dims:
            continue
        values = set(frame[dimension])
        if len(values) > 1:
            parts.append(_varying(frame, dimension, pivot_dims, show))
        elif values != {"-"} and not (dimension in NEW_DIMENSIONS and values == {DEFAULT_LABELS[dimension]}):
            parts.append(f"{dimension} {show(dimension, values.pop())}")
    better = higher_is_better(metric)
    if bold:
        parts.append(f"best per column in bold ({'higher' if better else 'lower'} is better)")
    return "; ".join(parts) + "."


def _best(cells: dict, col_keys, digits: int, better: bool | None) -> frozenset:
    best = set()
    if better is None:
        return frozenset()
    for col in col_keys:
        column = {key: round(cell.mean, digits) for key, cell in cells.items() if key[1] == col}
        if len(column) > 1:
            target = max(column.values()) if better else min(column.values())
            best.update(key for key, value in column.items() if value == target)
    return frozenset(best)


def pivot(rows: pd.DataFrame, rows_by=None, cols_by=None, metric: str = "psnr_gt",
          where: list[str] | None = None, names: Names | None = None) -> PivotTable:
    """Mean ± std over images of `metric` per (rows_by, cols_by) combination of the stored `rows`.

    rows_by, cols_by: dimensions (see DIMENSIONS); None gives model, defense (+ threat when there are several)
    by attack, eps. metric: a short name (psnr_gt, ssim_gt, lpips_gt, psnr_clean_out, ssim_clean_out,
    clean_psnr_gt, clean_ssim_gt) or a metric column. where: 'dimension=label' filters, e.g. ['eps=8/255'].
    names: display names (names.load_names) for the labels, headers and caption; None keeps the raw labels.
    """
    if rows.empty:
        raise SpecError("there are no result rows to tabulate; fill the folder with `udcbench run --out DIR` first")
    column = resolve_metric(metric, rows)
    frame = certified.settle(filter_rows(certified.beside(dimension_frame(rows), column), parse_where(where)))
    if column not in frame or frame[column].isna().all():
        found = column_metric(column)
        raise SpecError(f"no selected row has a value for {column}; pick another --metric"
                        + (f" or rerun with --metrics {found[0].name}" if found and not found[0].default else ""))
    frame = frame[frame[column].notna()].copy()
    frame[column] = frame[column].astype(float)
    rows_by, cols_by = _layout(frame, rows_by, cols_by)
    cols_by += certified.placed(frame, rows_by + cols_by)
    _check_single_experiment(frame, rows_by + cols_by)
    cells = {}
    for key, group in frame.groupby(list(rows_by + cols_by), sort=False):
        values = group[column]
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        cells[(tuple(key[:len(rows_by)]), tuple(key[len(rows_by):]))] = Cell(float(values.mean()), std, len(values))
    row_keys = tuple(sorted({r for r, _ in cells}, key=_key_order(rows_by)))
    col_keys = tuple(sorted({c for _, c in cells}, key=_key_order(cols_by)))
    places = digits(column)
    best = _best(cells, col_keys, places, higher_is_better(column))
    per_row = {}
    for dimension in ("threat", "seed"):
        if dimension not in rows_by + cols_by:
            labels = frame.groupby(list(rows_by))[dimension].agg(lambda s: " / ".join(sort_labels(dimension, set(s))))
            per_row[dimension] = {tuple(k) if isinstance(k, tuple) else (k,): v for k, v in labels.items()}
    caption = _caption(frame, column, cells, rows_by + cols_by, bool(best), names.show if names else _as_is)
    table = PivotTable(name=metric, metric=column, rows_by=rows_by, cols_by=cols_by, row_keys=row_keys,
                       col_keys=col_keys, cells=cells, best=best, caption=caption, digits=places, per_row=per_row)
    return table if names is None else _displayed(table, names)


def _displayed(table: PivotTable, names: Names) -> PivotTable:
    """The table with display names for its labels; rows and columns keep the order of the raw labels."""
    def mapping(dims, keys) -> dict:
        shown = [relabel({key[i] for key in keys}, dimension, names) for i, dimension in enumerate(dims)]
        return {key: tuple(found[label] for found, label in zip(shown, key)) for key in keys}

    rows, cols = mapping(table.rows_by, table.row_keys), mapping(table.cols_by, table.col_keys)
    per_row = {dimension: {rows[key]: " / ".join(names.show(dimension, v) for v in text.split(" / "))
                           for key, text in labels.items()} for dimension, labels in table.per_row.items()}
    return replace(table, row_keys=tuple(rows[key] for key in table.row_keys),
                   col_keys=tuple(cols[key] for key in table.col_keys),
                   cells={(rows[r], cols[c]): cell for (r, c), cell in table.cells.items()},
                   best=frozenset((rows[r], cols[c]) for r, c in table.best), per_row=per_row, names=names)


LABEL = re.compile(r"[A-Za-z0-9:._+/-]+")  # a LaTeX \label key that needs no escaping


def titled(table: PivotTable, label: str | None = None, caption: str | None = None) -> PivotTable:
    """The table with its own LaTeX \\label key (`--label tab:robustness`; default tab:udcbench-METRIC) and
    caption (`--caption`, plain text: each format escapes it; default the generated one)."""
    if label is not None and not LABEL.fullmatch(label):
        raise SpecError(f"--label {label!r}: a LaTeX label takes letters, digits and : . _ + / - only, e.g. "
                        "--label tab:robustness")
    if caption is not None and not caption.strip():
        raise SpecError("--caption is empty; give the caption text, or leave --caption out for the generated one")
    return replace(table, label=label or table.label, caption=table.caption if caption is None else caption)


# the renderers (render.py), importable from here as before
from udcbench.report.render import (RENDERERS, column_labels, latex_escape, to_csv, to_html,  # noqa: E402,F401
                                    to_latex, to_markdown)
