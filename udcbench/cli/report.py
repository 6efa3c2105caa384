"""`udcbench leaderboard`, `udcbench check` and `udcbench plot`: tables, the CI gate and figures of a run
folder, all recomputed from its stored rows (certified PSNR columns included, where runs have them)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from udcbench.cli.common import console
from udcbench.cli.progress import progress_interval, track
from udcbench.errors import DataError, SpecError
from udcbench.outputs import check_file, check_folder

notes = Console(stderr=True)  # 'wrote FILE' goes to stderr, so the table on stdout can be redirected
SUFFIXES = {"md": "md", "csv": "csv", "latex": "tex", "html": "html"}


class PlotKind(str, Enum):
    eps = "eps"
    certified = "certified"


class Format(str, Enum):
    md = "md"
    csv = "csv"
    latex = "latex"
    html = "html"


def stored_rows(directory: Path):
    from udcbench.runner.store import open_existing

    store = open_existing(directory)
    try:
        return store.rows()
    finally:
        store.close()


def _dimensions(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [name for name in text.split(",") if name.strip()]


def _write(path: Path, text: str, flag: str = "--out") -> Path:
    from udcbench.report.leaderboard import write_atomic

    check_file(path, flag)
    if not path.parent.is_dir():
        raise SpecError(f"cannot write {flag} {path}: its folder does not exist; pass a file in an existing folder")
    return write_atomic(path, text)


def _table_options(format: Format, names: Optional[str], label: Optional[str], caption: Optional[str]):
    """--names as names.load_names reads it; --label and --caption refused where the format has none."""
    from udcbench.report.names import load_names

    if label is not None and format is not Format.latex:
        raise SpecError(f"--label sets the LaTeX \\label; it applies to --format latex only, not {format.value}")
    if caption is not None and format is Format.csv:
        raise SpecError("a CSV table has no caption; --caption applies to --format md, latex and html")
    return load_names(names)


def leaderboard_(
    directory: Path = typer.Argument(..., help="A --out folder of `udcbench run`."),
    format: Format = typer.Option(Format.md, "--format", "-f", help="md, csv, latex or html (printed and written)."),
    rows: Optional[str] = typer.Option(None, "--rows", help="Pivot table: dimensions down the side, e.g. "
                                       "model,defense (default; + threat when there are several)."),
    cols: Optional[str] = typer.Option(None, "--cols", help="Pivot table: dimensions across, e.g. attack,eps "
                                       "(default). Dimensions: model, weights, defense, threat, attack, objective, "
                                       "eps, steps, seed, data, split, norm, eot, mask, settings, batch_size, "
                                       "precision, scoring, model_options, weights_digest, device, run, bound."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Pivot table: psnr_gt (default), ssim_gt, "
                                         "lpips_gt, psnr_clean_out, ssim_clean_out, clean_psnr_gt, clean_ssim_gt, "
                                         "cert@R (certified PSNR at radius R: runs with --radius), cert_clean@R "
                                         "or a metric column. With certificates, psnr_gt and psnr_clean_out show "
                                         "cert@R beside the attacked value (dimension bound)."),
    where: list[str] = typer.Option([], "--where", help="Pivot table: keep rows with DIMENSION=VALUE "
                                    "(repeatable; values of one dimension are alternatives), e.g. eps=8/255."),
    names: Optional[str] = typer.Option(None, "--names", metavar="raw|display|FILE.yaml", help="Pivot table: "
                                        "raw labels (default), display names for papers (Uformer-T, PGD, C&W, "
                                        "Purify+FT; capitalised headers, ε = 8/255 column headers), or a YAML "
                                        "file of your own raw: display names on top of those."),
    label: Optional[str] = typer.Option(None, "--label", help="Pivot table, latex: the \\label key (default "
                                        "tab:udcbench-METRIC), e.g. tab:robustness."),
    caption: Optional[str] = typer.Option(None, "--caption", help="Pivot table, md/latex/html: caption text "
                                          "instead of the generated one (escaped for the format)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE", help="File to write (default "
                                       "DIR/leaderboard.FORMAT, or DIR/table-METRIC.{md,csv,tex,html} for a pivot "
                                       "table)."),
    old_output: Optional[Path] = typer.Option(None, "--output", hidden=True),  # --out's old name, deprecated
) -> None:
    """Re-render the leaderboard of a run folder from its stored rows, or a pivot table of one metric.

    A pivot table (mean ± std over images) is made with --rows, --cols, --metric or --where, and always for latex
    and html.

    Example: udcbench leaderboard runs/demo --format latex -o table.tex"""
    from udcbench.report import leaderboard, tables

    if out is not None and old_output is not None:
        raise SpecError("--output is the old name of --out; give only --out FILE")
    flag, output = ("--out", out) if old_output is None else ("--output", old_output)
    stored = stored_rows(directory)
    if output is not None:
        check_file(output, flag)
    shown = _table_options(format, names, label, caption)
    if rows is None and cols is None and metric is None and not where and format in (Format.md, Format.csv) \
            and shown is None and label is None and caption is None:
        table = leaderboard.summarise(stored)
        text = leaderboard.to_markdown(table) if format is Format.md else leaderboard.to_csv(table)
        if output is None:
            leaderboard.write(table, directory, formats=(format.value,))
        else:
            _write(output, text, flag)
        sys.stdout.write(text)
        return
    table = tables.pivot(stored, _dimensions(rows), _dimensions(cols), metric or "psnr_gt", where, names=shown)
    text = tables.RENDERERS[format.value](tables.titled(table, label, caption))
    path = _write(output or directory / f"table-{table.name}.{SUFFIXES[format.value]}", text, flag)
    sys.stdout.write(text)
    notes.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)


def check_(
    directory: Path = typer.Argument(..., help="A --out folder of `udcbench run`."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", metavar="FILE", help="Required: the leaderboard "
                                            "CSV to compare with (as `udcbench leaderboard DIR --format csv` "
                                            "writes it), e.g. leaderboards/ci.csv in the udcbench repository."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Largest allowed move of a PSNR column, in dB."),
    ssim_tolerance: float = typer.Option(0.005, "--ssim-tolerance", help="Largest allowed move of an SSIM or "
                                         "LPIPS column."),
    strict: bool = typer.Option(False, "--strict", help="Also fail on configurations the baseline lacks."),
    metric_tolerance: list[str] = typer.Option([], "--metric-tolerance", help="NAME=VALUE: largest allowed move "
                                               "of another metric's columns (default: its registered tolerance; "
                                               "`udcbench list metrics`; certified PSNR: certified-psnr=VALUE "
                                               "or certified-psnr@R=VALUE, default 0.05 dB); repeatable."),
) -> None:
    """CI gate: compare the leaderboard of a run folder with a baseline leaderboard and fail (exit 1) if it moved.

    It fails when DIR lost a baseline configuration, changed an image count, or moved a metric beyond the
    tolerance; each offending cell is printed on its own line. --baseline has no default: give the committed CSV
    to compare with.

    Example: udcbench check runs/ci --baseline leaderboards/ci.csv"""
    from udcbench.report import check

    if baseline is None:
        raise SpecError("no --baseline given; give --baseline FILE, the leaderboard.csv to compare with (e.g. "
                        "leaderboards/ci.csv in the udcbench repository)")

    result = check.check(directory, baseline, tolerance, ssim_tolerance, strict,
                         metric_tolerances=check.parse_metric_tolerances(metric_tolerance))
    for line in result.report_lines():
        console.print(f"FAIL {line}", markup=False, highlight=False, soft_wrap=True, style="red")
    for finding in result.new:
        console.print(finding.describe(), markup=False, highlight=False, soft_wrap=True,
                      style="red" if strict else "yellow")
    console.print(result.summary(), markup=False, highlight=False, soft_wrap=True,
                  style="green" if result.passed else "bold red")
    if not result.passed:
        raise typer.Exit(1)


def _replay():
    from udcbench.runner import run

    return run.replay  # looked up at call time (tests replace it)


def _folder(folder: Path) -> Path:
    check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _plot_certified(stored, folder: Path, grid_options: dict) -> None:
    """--kind certified: certified_vs_radius.png only; refused (nothing written) without certified columns."""
    from udcbench.report import plots

    given = [name for name, value in grid_options.items() if value]
    if given:
        raise SpecError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to --kind eps "
                        f"(psnr_vs_eps.png, image_grid.png); drop {'it' if len(given) == 1 else 'them'} with "
                        "--kind certified")
    plots.certified_curves(stored)  # no certified column: a DataError before the folder is touched
    path = plots.certified_vs_radius(stored, _folder(folder) / "certified_vs_radius.png")
    console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)


def plot(
    directory: Path = typer.Argument(..., help="A --out folder of `udcbench run`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Folder for the PNGs (default: DIR)."),
    kind: PlotKind = typer.Option(PlotKind.eps, "--kind", help="eps (default): psnr_vs_eps.png and "
                                  "image_grid.png; certified: certified_vs_radius.png, certified PSNR against the "
                                  "L2 radius (runs with --defense smooth:… --radius)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Metric against eps: psnr_gt (default), "
                                         "ssim_gt, lpips_gt, psnr_clean_out, ... or a metric column."),
    image: Optional[str] = typer.Option(None, "--image", help="Image of the grid (default: the first name)."),
    run: list[str] = typer.Option([], "--run", help="Run hash (or a unique prefix) to show in the grid "
                                  "(repeatable; default: up to 4 runs at the largest eps, one per defense)."),
) -> None:
    """Draw the figures of a run folder: a metric against the attack budget and an image grid, or certified PSNR.

    psnr_vs_eps.png shows the metric against the attack budget, image_grid.png one image replayed through the
    chosen runs (y, y′, f(y), f(y′), the defended output, ground truth, amplified δ); with --kind certified,
    certified_vs_radius.png (certified PSNR vs ground truth against the radius) is drawn instead.

    Example: udcbench plot runs/demo --metric ssim_gt -o figures"""
    from udcbench.report import plots

    stored = stored_rows(directory)
    if kind is PlotKind.certified:
        _plot_certified(stored, out or directory, {"--metric": metric, "--image": image, "--run": run})
        return
    hashes = plots.choose_runs(stored, run or None)  # check --run and --image before drawing anything
    name = plots.choose_image(stored, hashes, image)
    if metric is not None:  # an unknown metric is refused before the folder is made
        plots.resolve_metric(metric, stored)
    progress_interval()  # a bad UDCBENCH_PROGRESS_INTERVAL too
    check_folder(out or directory)
    folder = _folder(out or directory)
    try:
        path = plots.psnr_vs_eps(stored, folder / "psnr_vs_eps.png", metric or "psnr_gt")
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
    except DataError as error:
        console.print(f"[yellow]skipped psnr_vs_eps.png:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    replay = _replay()
    runs = plots.runs_table(stored).set_index("run_hash")
    panels = []
    for run_hash in track(hashes, console, "replaying", "runs", lambda h: f"{h} {runs.loc[h, 'label']}"):
        panel = dict(replay(directory, run_hash, name))
        panel.setdefault("label", runs.loc[run_hash, "label"])
        panel.setdefault("eps", runs.loc[run_hash, "eps_value"])
        panel.setdefault("norm", runs.loc[run_hash, "norm"])
        panel.setdefault("defense", runs.loc[run_hash, "defense"])  # 'none': the grid leaves out the defended column
        panels.append(panel)
    layout = plots.image_grid(panels, folder / "image_grid.png")
    console.print(f"wrote {escape(str(layout.path))} (image {escape(name)}; runs {', '.join(hashes)})",
                  highlight=False, soft_wrap=True)


COMMANDS = {"leaderboard": leaderboard_, "check": check_, "plot": plot}  # name -> function, in --help order
