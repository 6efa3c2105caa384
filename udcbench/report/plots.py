"""Figures of a results folder, drawn with matplotlib's Agg canvas (no pyplot, no global state) and written
atomically as PNG with fixed size, dpi and metadata, so the same data gives the same bytes.

- psnr_vs_eps: the metric against the attack budget ε, one subplot per (attack, norm), all with one y range, one
  line per (model, defense, threat), the clean input as the ε = 0 point, ± std over images as error bars.
- certified_vs_radius: certified PSNR vs ground truth against the L2 radius r, one line per (model, defense) of
  the runs certified by median smoothing (--defense smooth:… --radius), the smoothed clean output at r = 0.
- image_grid: one row per replayed run of one image: degraded y, attacked y′, f(y), f(y′), the defended
  output for y′ (unless no run has a defense), ground truth and the amplified perturbation δ = y′ − y.
"""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from udcbench.errors import DataError, SpecError
from udcbench.report.leaderboard import format_eps, write_atomic
from udcbench.metrics.base import certified_radius, column_metric, description
from udcbench.report import certified
from udcbench.report.escape import plot_text
from udcbench.report.tables import dimension_frame, resolve_metric, sort_key

DPI = 100
COUNTERPARTS = {"adv_gt": "clean_gt", "adv_gt_undefended": "clean_gt_undefended"}  # attacked -> clean pair
LINE_DIMENSIONS = ("model", "defense", "threat")
# shown in a line's label too when they differ between the runs of one subplot
OTHER_DIMENSIONS = ("weights", "objective", "steps", "seed", "data", "split", "mask", "eot", "settings",
                    "batch_size", "eps_batch", "precision", "backend", "scoring", "model_options", "weights_digest",
                    "device")
PANEL_IMAGES = (("degraded", "degraded y"), ("adversarial", "attacked y′"), ("restored", "restored f(y)"),
                ("restored_adv", "restored f(y′)"), ("defended_adv", "defended D(y′)"), ("gt", "ground truth"))
HEADER, LEFT, GAP = 44, 180, 6  # pixels: column titles, row labels, space between tiles
# what a certificate depends on besides model and defense (never the attack): lines split on these when they differ
CERTIFIED_DIMENSIONS = ("weights", "seed", "data", "split", "batch_size", "precision", "backend", "scoring",
                        "model_options", "weights_digest", "device")
CLEAN_AT_ZERO = "psnr_clean_gt"  # the smoothed clean output's measured PSNR, drawn at r = 0


def clean_counterpart(column: str) -> str | None:
    """The column of the same metric on the clean input (psnr_adv_gt -> psnr_clean_gt), plotted at ε = 0."""
    found = column_metric(column)
    if found is None or found[1] not in COUNTERPARTS or COUNTERPARTS[found[1]] not in found[0].pairs:
        return None
    return f"{found[0].column}_{COUNTERPARTS[found[1]]}"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return write_atomic(path, buffer.getvalue())


def _mean_std(values: pd.Series) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Curve:
    """One line of psnr_vs_eps: x in 1/255 for L∞ budgets (raw for L2), x = 0 is the clean input."""

    label: str
    colour: str
    xs: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]


def eps_curves(rows: pd.DataFrame, metric: str = "psnr_gt") -> dict[tuple[str, str], list[Curve]]:
    """What psnr_vs_eps draws: {(attack, norm): curves}, one curve per (model, defense, threat) and any other
    dimension that differs between the runs of one subplot. Raises DataError when no stored row has an eps
    budget (C&W only) and a value for the metric."""
    column = resolve_metric(metric, rows)
    frame = dimension_frame(rows)
    frame["eps_value"] = pd.to_numeric(rows["eps"], errors="coerce")
    if column not in frame:
        frame[column] = np.nan
    frame = frame[frame["eps_value"].notna() & frame[column].notna()]
    if frame.empty:
        raise DataError(f"no stored row has an attack with an eps budget and a value for {column}; a plot "
                        "against eps needs runs of an attack such as pgd at one or more --eps")
    clean = clean_counterpart(column)
    order: dict[str, tuple] = {}  # line label -> sort key; a label keeps its colour in every subplot
    lines: dict[tuple[str, str], list] = {}
    for attack, norm in sorted({(a, n) for a, n in zip(frame["attack"], frame["norm"])}):
        part = frame[(frame["attack"] == attack) & (frame["norm"] == norm)]
        dims = LINE_DIMENSIONS + tuple(d for d in OTHER_DIMENSIONS if part[d].nunique() > 1)
        if (part.groupby(list(dims) + ["eps_value"])["run"].nunique() > 1).any():
            dims += ("run",)  # runs that differ only in what no label shows: one line each, never averaged
        for key, line in part.groupby(list(dims), sort=False):
            label = " · ".join(key[:3]) + "".join(f" · {d} {v}" for d, v in zip(dims[3:], key[3:]))
            order[label] = tuple(sort_key(d, v) for d, v in zip(LINE_DIMENSIONS, key[:3])) + (label,)
            lines.setdefault((attack, norm), []).append((label, line))
    colours = {label: f"C{index % 10}" for index, label in enumerate(sorted(order, key=order.get))}
    curves: dict[tuple[str, str], list[Curve]] = {}
    for (attack, norm), groups in lines.items():
        scale = 255.0 if norm == "linf" else 1.0
        for label, line in sorted(groups, key=lambda group: order[group[0]]):
            points = []
            if clean is not None and clean in line and line[clean].notna().any():
                points.append((0.0, *_mean_std(line.groupby("image")[clean].mean())))
            for eps, at_eps in sorted(line.groupby("eps_value"), key=lambda item: item[0]):
                points.append((eps * scale, *_mean_std(at_eps[column])))
            xs, means, stds = zip(*points)
            curves.setdefault((attack, norm), []).append(Curve(label, colours[label], xs, means, stds))
    return curves


def psnr_vs_eps(rows: pd.DataFrame, path: str | Path, metric: str = "psnr_gt") -> Path:
    """Plot `metric` (a short name or column; default attacked PSNR vs ground truth) against eps, one subplot
    per (attack, norm), with ± std error bars, and write the PNG to `path` (see eps_curves)."""
    return _save(eps_figure(rows, metric), path)


def eps_figure(rows: pd.DataFrame, metric: str = "psnr_gt"):
    """The matplotlib Figure psnr_vs_eps writes: one subplot per (attack, norm), all with the same y limits."""
    curves = eps_curves(rows, metric)
    column = resolve_metric(metric, rows)
    figure = _figure(max(6.0, 5.0 * len(curves)), 4.6)
    axes = figure.subplots(1, len(curves), squeeze=False)[0]
    short = description(column).split(":")[0]
    for ax, ((attack, norm), lines) in zip(axes, curves.items()):
        for curve in lines:
            ax.errorbar(curve.xs, curve.means, yerr=curve.stds, marker="o", markersize=4, capsize=3,
                        linewidth=1.5, color=curve.colour, label=plot_text(curve.label))
        ax.set_title(plot_text(f"{attack} ({'L∞' if norm == 'linf' else 'L2' if norm == 'l2' else norm})"))
        ax.set_xlabel("ε (× 1/255)" if norm == "linf" else "ε (L2 norm)")
        ax.set_ylabel(short)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    share_y(axes)
    note = "mean ± std over images" + ("; ε = 0: the clean input" if clean_counterpart(column) else "")
    figure.suptitle(f"{short} against the attack budget ε\n{note}", fontsize=10)
    figure.tight_layout()
    return figure


def share_y(axes) -> None:
    """Give every axes the y range that holds all of them (each autoscaled to its own data first)."""
    limits = [ax.get_ylim() for ax in axes]
    for ax in axes:
        ax.set_ylim(min(low for low, _ in limits), max(high for _, high in limits))


def _smoothings(frame: pd.DataFrame) -> list:
    return list(dict.fromkeys((n, alpha) for _, n, alpha in certified.smoothing(frame)))


def certified_curves(rows: pd.DataFrame) -> list[Curve]:
    """What certified_vs_radius draws: one curve per (model, defense) and any CERTIFIED_DIMENSIONS that differ,
    x the radius, y certified PSNR vs ground truth, mean ± std over images (an image certified by several runs,
    one per attack, counts once, with its mean); at r = 0 the smoothed clean output's measured PSNR unless the
    rows hold radius-0 certificates. Raises DataError when no row has a certified column."""
    frame = dimension_frame(rows)
    columns = certified.columns(frame, "cert_gt")
    if not columns:
        raise DataError("no stored row has certified PSNR columns; run with --defense smooth:… --radius 0.1,0.25 "
                        "first, then plot them")
    frame = frame[frame[columns].notna().any(axis=1)]
    radii = [(certified_radius(column), column) for column in columns]
    if radii[0][0] != 0.0:
        radii.insert(0, (0.0, CLEAN_AT_ZERO))
    dims = ("model", "defense") + tuple(d for d in CERTIFIED_DIMENSIONS if frame[d].nunique() > 1)
    several = len(_smoothings(frame)) > 1  # then each line states its own n and 1 − α
    lines = []
    for key, line in frame.groupby(list(dims), sort=False):
        per_image = line.groupby("image")[[column for _, column in radii]].mean()
        points = [(r, *_mean_std(per_image[c].dropna())) for r, c in radii if per_image[c].notna().any()]
        label = " · ".join(key[:2]) + "".join(f" · {d} {v}" for d, v in zip(dims[2:], key[2:]))
        if several:
            label += f" ({certified.smoothing_text(certified.smoothing(line), short=True)})"
        lines.append((tuple(sort_key(d, v) for d, v in zip(dims[:2], key[:2])) + (label,), label, points))
    curves = []
    for index, (_, label, points) in enumerate(sorted(lines, key=lambda line: line[0])):
        xs, means, stds = zip(*points)
        curves.append(Curve(label, f"C{index % 10}", xs, means, stds))
    return curves


def certified_vs_radius(rows: pd.DataFrame, path: str | Path) -> Path:
    """Plot certified PSNR vs ground truth against the L2 radius (see certified_curves), with ± std error bars,
    the smoothing's n and confidence 1 − α in the title, and write the PNG to `path`."""
    curves = certified_curves(rows)
    frame = dimension_frame(rows)
    settings = _smoothings(frame)
    measured = all(certified_radius(column) > 0 for column in certified.columns(frame, "cert_gt"))
    figure = _figure(6.0, 4.6)
    ax = figure.subplots(1, 1)
    for curve in curves:
        ax.errorbar(curve.xs, curve.means, yerr=curve.stds, marker="o", markersize=4, capsize=3, linewidth=1.5,
                    color=curve.colour, label=plot_text(curve.label))
    ax.set_xlabel("L2 radius r (‖δ‖₂ ≤ r on the clean input)")
    ax.set_ylabel("certified PSNR vs ground truth (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    smoothing = (certified.smoothing_text([("", n, alpha) for n, alpha in settings]) if len(settings) <= 1
                 else "n and 1 − α per line")
    zero = "; r = 0: the smoothed clean output (measured)" if measured else ""
    figure.suptitle(f"certified PSNR vs ground truth against the L2 radius r\nmean ± std over images{zero}\n"
                    f"median smoothing, {smoothing}", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


@dataclass(frozen=True)
class GridLayout:
    """Where image_grid put its tiles, in pixels of the written PNG (origin top left)."""

    path: Path
    rows: int
    columns: int
    tile_height: int
    tile_width: int
    scale: float  # tile pixels per image pixel
    amplification: float  # δ is shown as 0.5 + amplification · δ
    width: int
    height: int
    keys: tuple[str, ...] = ()  # the panel key of each image column, left to right (then δ)

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the tile in `row`, `column` (bottom and right exclusive)."""
        top = HEADER + row * (self.tile_height + GAP)
        left = LEFT + column * (self.tile_width + GAP)
        return top, left, top + self.tile_height, left + self.tile_width


def _as_image(value, name: str) -> np.ndarray:
    array = value.detach().cpu().float().numpy() if hasattr(value, "detach") else np.asarray(value, np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise SpecError(f"panel image {name} has shape {tuple(array.shape)}; pass a (1, 3, H, W) or (3, H, W) "
                        "tensor with values in [0, 1]")
    if not np.isfinite(array).all():
        raise SpecError(f"panel image {name} holds NaN or infinite values")
    return np.repeat(array, 3 // array.shape[0], axis=0).transpose(1, 2, 0).astype(np.float64)


def _resize(image: np.ndarray, scale_up: int, scale_down: int) -> np.ndarray:
    if scale_down > 1:
        height, width = (image.shape[0] // scale_down) * scale_down, (image.shape[1] // scale_down) * scale_down
        image = image[:height, :width].reshape(height // scale_down, scale_down, width // scale_down, scale_down, 3)
        image = image.mean(axis=(1, 3))
    return np.repeat(np.repeat(image, scale_up, axis=0), scale_up, axis=1)


def _row_label(panel: dict) -> str:
    text = plot_text("\n".join(textwrap.wrap(str(panel.get("label", "")), 26)))
    eps = panel.get("eps")
    if eps is not None and eps == eps:
        text += f"\nε = {format_eps(float(eps), panel.get('norm') or 'linf')}"
    return text


def undefended(panel: dict) -> bool:
    """Whether a panel's run has no defense: its `defense` label is 'none' or, where the panel has none, its
    defended output is f(y′) itself."""
    if panel.get("defense") is not None:
        return str(panel["defense"]) == "none"
    defended, restored = panel.get("defended_adv"), panel.get("restored_adv")
    return defended is not None and restored is not None and np.array_equal(
        _as_image(defended, "defended_adv"), _as_image(restored, "restored_adv"))


def grid_columns(panels: list[dict]) -> list[tuple[str, str]]:
    """(panel key, title) of the image columns image_grid draws, left to right (the δ column follows them):
    PANEL_IMAGES, less the defended output when no panel's run has a defense (it would repeat f(y′))."""
    if panels and all(undefended(panel) for panel in panels):
        return [(key, title) for key, title in PANEL_IMAGES if key != "defended_adv"]
    return list(PANEL_IMAGES)


def image_grid(panels: list[dict], path: str | Path) -> GridLayout:
    """Draw one row per panel and write the PNG to `path`. A panel holds (1, 3, H, W) images in [0, 1] under
    degraded, adversarial, restored, restored_adv, defended_adv and gt, plus eps (float or None), label and
    optionally defense (its label, 'none' for an undefended run: see grid_columns).
    Small images are enlarged by an integer factor (nearest), large ones reduced by one (area mean); δ uses
    one amplification for all rows, 0.5 / max |δ|, so rows compare."""
    if not panels:
        raise SpecError("image_grid needs at least one panel")
    images = []
    for index, panel in enumerate(panels):
        missing = [key for key, _ in PANEL_IMAGES if key not in panel]
        if missing:
            raise SpecError(f"panel {index} lacks {', '.join(missing)}; a panel needs "
                            f"{', '.join(key for key, _ in PANEL_IMAGES)}, eps and label")
        row = [_as_image(panel[key], key) for key, _ in PANEL_IMAGES]
        if len({image.shape for image in row} | {image.shape for r in images for image in r}) != 1:
            raise SpecError(f"panel {index} ({panel.get('label', '')}) has images of another size than the "
                            "rest; replay one image for every run")
        images.append(row)
    shown_columns = grid_columns(panels)
    deltas = [row[1] - row[0] for row in images]
    images = [[image for image, column in zip(row, PANEL_IMAGES) if column in shown_columns] for row in images]
    largest = max(float(np.abs(delta).max()) for delta in deltas)
    amplification = 0.5 / largest if largest > 0 else 0.0
    height, width = images[0][0].shape[:2]
    side = max(height, width)
    scale_up = math.ceil(128 / side) if side < 128 else 1
    scale_down = math.ceil(side / 256) if side > 320 else 1
    tile_height, tile_width = (height // scale_down) * scale_up, (width // scale_down) * scale_up
    columns = len(shown_columns) + 1
    canvas_width = LEFT + columns * (tile_width + GAP) + 24  # room for the last column's title
    canvas_height = HEADER + len(panels) * (tile_height + GAP)
    mosaic = np.full((canvas_height, canvas_width, 3), 255, dtype=np.uint8)
    layout = GridLayout(Path(path), len(panels), columns, tile_height, tile_width, scale_up / scale_down,
                        amplification, canvas_width, canvas_height, tuple(key for key, _ in shown_columns))
    for row, (shown, delta) in enumerate(zip(images, deltas)):
        for column, image in enumerate(shown + [np.clip(0.5 + amplification * delta, 0.0, 1.0)]):
            top, left, bottom, right = layout.tile_box(row, column)
            tile = _resize(np.clip(image, 0.0, 1.0), scale_up, scale_down)
            mosaic[top:bottom, left:right] = np.round(tile * 255).astype(np.uint8)

    figure = _figure(canvas_width / DPI, canvas_height / DPI)
    figure.figimage(mosaic, xo=0, yo=0, origin="upper")
    titles = [title for _, title in shown_columns]
    titles.append(f"δ = y′ − y, ×{amplification:.3g}\n(gray = 0)" if largest > 0 else "δ = y′ − y\n(zero)")
    for column, title in enumerate(titles):
        _, left, _, right = layout.tile_box(0, column)
        figure.text((left + right) / 2 / canvas_width, 1 - HEADER / 2 / canvas_height, title, ha="center",
                    va="center", fontsize=9)
    for row, panel in enumerate(panels):
        top, left, bottom, _ = layout.tile_box(row, 0)
        figure.text((left - 8) / canvas_width, 1 - (top + bottom) / 2 / canvas_height, _row_label(panel),
                    ha="right", va="center", fontsize=8)
    _save(figure, path)
    return layout


def runs_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per stored run: run_hash, labels (model, defense, threat, attack, eps, norm), eps value and a
    'label' for figures."""
    frame = dimension_frame(rows)
    frame["eps_value"] = pd.to_numeric(rows["eps"], errors="coerce")
    runs = frame.drop_duplicates("run_hash").copy()
    runs["label"] = runs["model"] + " · " + runs["defense"] + " · " + runs["threat"] + " · " + runs["attack"]
    return runs.reset_index(drop=True)


def choose_runs(rows: pd.DataFrame, runs: list[str] | None = None, limit: int = 4) -> list[str]:
    """The given run hashes (a unique prefix is enough), else up to `limit` runs at the largest eps (L∞ first),
    one per defense before any second run of a defense."""
    table = runs_table(rows)
    if table.empty:
        raise DataError("the folder holds no result rows; fill it with `udcbench run --out DIR` first")
    known = list(table["run_hash"])
    if runs:
        chosen = []
        for wanted in runs:
            matches = [h for h in known if h == wanted] or [h for h in known if h.startswith(wanted)]
            if len(matches) != 1:
                listing = "; ".join(f"{h} ({label}, eps {eps})" for h, label, eps in
                                    zip(table["run_hash"], table["label"], table["eps"]))
                raise SpecError(f"{'no' if not matches else 'more than one'} run matches --run {wanted}; "
                                f"runs in this folder: {listing}")
            chosen.append(matches[0])
        return list(dict.fromkeys(chosen))
    budgeted = table[table["eps_value"].notna()]
    if not budgeted.empty:
        linf = budgeted[budgeted["norm"] == "linf"]
        pool = linf if not linf.empty else budgeted
        table = pool[pool["eps_value"] == pool["eps_value"].max()]
    runs = sorted(table.to_dict("records"), key=lambda run: (run["defense"] != "none", run["defense"], run["model"],
                                                             run["threat"] != "gray-box", run["run_hash"]))
    first, rest, seen = [], [], set()
    for run in runs:
        (rest if run["defense"] in seen else first).append(run["run_hash"])
        seen.add(run["defense"])
    return (first + rest)[:limit]


def choose_image(rows: pd.DataFrame, run_hashes: list[str], image: str | None = None) -> str:
    """`image` if every chosen run scored it, else the first image name (sorted) that they all share."""
    shared = None
    for run_hash in run_hashes:
        names = set(rows.loc[rows["run_hash"] == run_hash, "image"])
        shared = names if shared is None else shared & names
    shared = sorted(shared or ())
    if image is None and shared:
        return shared[0]
    if image in shared:
        return image
    if not shared:
        raise DataError(f"runs {', '.join(run_hashes)} share no image; pick runs of the same data with --run")
    raise SpecError(f"image {image!r} is not among the images of the chosen runs; available: {', '.join(shared)}")
