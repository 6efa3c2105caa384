"""Result frames as rich tables on the console: the leaderboard `udcbench run` prints after a run."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from udcbench.cli.common import console
from udcbench.metrics.base import column_label

SHORT_LABELS = {"psnr_clean_gt": "clean PSNR", "ssim_clean_gt": "clean SSIM", "psnr_adv_gt": "attacked PSNR",
                "ssim_adv_gt": "attacked SSIM", "psnr_adv_clean": "PSNR vs clean out",
                "ssim_adv_clean": "SSIM vs clean out", "lpips_clean_gt": "clean LPIPS",
                "lpips_adv_gt": "attacked LPIPS", "lpips_adv_clean": "LPIPS vs clean out", "l2": "‖δ‖₂",
                "linf": "‖δ‖∞", "run_hash": "run"}
DEFENDED_LABELS = {"psnr_clean_gt_undefended": "clean\nPSNR", "ssim_clean_gt_undefended": "clean\nSSIM",
                   "psnr_adv_gt_undefended": "attacked\nPSNR", "ssim_adv_gt_undefended": "attacked\nSSIM",
                   "psnr_clean_gt": "defended\nclean\nPSNR", "ssim_clean_gt": "defended\nclean\nSSIM",
                   "psnr_clean_loss": "clean\nloss\ndB", "psnr_adv_gt": "defended\nattacked\nPSNR",
                   "ssim_adv_gt": "defended\nattacked\nSSIM", "psnr_adv_clean": "defended\nvs clean\nout PSNR"}
ALWAYS_SHOWN = ("model", "defense", "attack", "eps")


def show_table(frame, title: str) -> None:
    """The leaderboard as a rich table; key columns with one value for all rows move into the caption."""
    from udcbench.report.identity import DEFAULT_LABELS, KEYS, RUN, SETTINGS, shown_columns
    from udcbench.report.leaderboard import has_defense

    always = ("defense",) if has_defense(frame) else ALWAYS_SHOWN  # defended tables are wide: keep only defense
    keys = [c for c in KEYS + SETTINGS if c in frame]
    constant = [c for c in keys if c not in always and frame[c].nunique(dropna=False) <= 1 and len(frame)]
    hidden = set(constant)
    if RUN in frame and RUN not in shown_columns(frame):
        hidden.add(RUN)  # shown only when runs share every label
    constant = [c for c in constant if c in KEYS or (c != "weights_digest" and frame[c].iloc[0] != "-"
                                                     and (c == "scoring" or frame[c].iloc[0] != DEFAULT_LABELS.get(c)))]
    shown = [c for c in frame.columns if c not in hidden]
    labels = dict(SHORT_LABELS)
    if has_defense(frame):  # clean / attacked (bare model) first, then the defended outputs
        labels.update(DEFENDED_LABELS)
        shown = [c for c in shown if c != "ssim_adv_clean"]
    caption = " · ".join(f"{c} {frame[c].iloc[0]}" for c in constant)
    table = Table(title=escape(title), title_justify="left", caption=escape(caption) or None, caption_justify="left")
    rows = [[_cell_text(column, value) for column, value in zip(shown, values)]
            for values in frame[shown].itertuples(index=False)]
    for index, column in enumerate(shown):
        # every value stays whole (long labels fold onto more lines); headers wrap to make room
        widest = max([len(row[index]) for row in rows] + [1])
        numeric = frame[column].dtype.kind in "fi"
        table.add_column(labels.get(column) or column_label(column), justify="right" if numeric else "left",
                         min_width=min(widest, 24), overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # names from files are text, never markup
    console.print(table)


def _cell_text(column: str, value) -> str:
    if isinstance(value, float) and value != value:
        return "-"
    if isinstance(value, float):
        digits = {"ssim": 4, "lpips": 4, "queries": 0, "iterations": 0, "l2": 4, "linf": 4}.get(
            column.split("_")[0], 4 if "SSIM" in column else 2)
        return f"{value:.{digits}f}"
    return str(value)
