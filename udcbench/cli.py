"""The `udcbench` command line: parses, calls the Python API, prints with rich. Nothing else lives here."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from udcbench.errors import UdcbenchError

app = typer.Typer(help="Adversarial robustness benchmark for under-display-camera (UDC) image restoration.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# piped or captured output gets a wide fixed width so tables stay readable in logs (rich would use 80)
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)


def fail(error: Exception) -> None:
    errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


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
NONE_SHOWN = {"const": "unset"}  # how `list attacks` shows a None default that does not mean "chosen for you"


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
    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    rows = [[_cell_text(column, value) for column, value in zip(shown, values)]
            for values in frame[shown].itertuples(index=False)]
    for index, column in enumerate(shown):
        # every value stays whole (long labels fold onto more lines); headers wrap to make room
        widest = max([len(row[index]) for row in rows] + [1])
        numeric = frame[column].dtype.kind in "fi"
        table.add_column(labels.get(column, column), justify="right" if numeric else "left",
                         min_width=min(widest, 24), overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _cell_text(column: str, value) -> str:
    if isinstance(value, float) and value != value:
        return "-"
    if isinstance(value, float):
        digits = {"ssim": 4, "lpips": 4, "queries": 0, "iterations": 0, "l2": 4, "linf": 4}.get(
            column.split("_")[0], 4 if "SSIM" in column else 2)
        return f"{value:.{digits}f}"
    return str(value)


def invoked_command() -> str:
    """The command line as typed (shell-quoted), recorded in the headers of the weights a command writes."""
    return "udcbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def step_logger(steps: int, timed: bool = False):
    """progress(step, loss) for training loops: one plain line every 5 % of `steps` (and the last)."""
    import time

    every, started = max(1, steps // 20), time.time()

    def log(step: int, loss: float) -> None:
        if step % every == 0 or step == steps:
            elapsed = f" ({time.time() - started:.0f} s)" if timed else ""
            console.print(f"step {step}/{steps} loss {loss:.4f}{elapsed}", highlight=False)

    return log


def parse_attack_params(items: list[str]) -> dict:
    """`KEY=VALUE` strings -> typed values: fractions (2/255) stay text for the attack to parse; ints, floats,
    true/false and none are converted; anything else is a string."""
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UdcbenchError(f"cannot read --attack-param {item!r}; write KEY=VALUE, e.g. -p basis=dct")
        text = text.strip()
        lowered = text.lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered == "none":
            value = None
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        params[key.strip().replace("-", "_")] = value
    return params


def attack_variant(name: str, norm: str | None) -> str:
    """--norm picks the L∞ or L2 variant of an attack: pgd + l2 -> pgd-l2, square-l2 + linf -> square."""
    from udcbench.registry import ATTACKS

    if norm is None:
        return name
    norm = norm.lower().replace("∞", "inf")
    if norm not in ("linf", "l2"):
        raise UdcbenchError(f"unknown --norm {norm!r}; use linf or l2")
    entry = ATTACKS.get(name)
    if entry.info.get("norm") in (norm, "base's"):
        return name
    base = name[:-3] if name.endswith("-l2") else name
    candidate = base if norm == "linf" else f"{base}-l2"
    if candidate in ATTACKS.names():
        return candidate
    raise UdcbenchError(f"attack {name!r} has no {norm} variant; attacks with one: "
                        f"{', '.join(e.name for e in ATTACKS.entries() if e.info.get('norm') == norm)}")


class Kind(str, Enum):
    models = "models"
    attacks = "attacks"
    defenses = "defenses"
    datasets = "datasets"
    metrics = "metrics"


@app.command("list")
def list_(kind: Kind = typer.Argument(..., help="What to list.")) -> None:
    """List registered models, attacks, defenses, datasets or metrics."""
    from udcbench import registry
    from udcbench.models import bundled_weights
    from udcbench.report.leaderboard import format_eps

    entries = getattr(registry, kind.value.upper()).entries()
    table = Table(title=kind.value, title_justify="left")
    if kind is Kind.models:
        import torch

        for column in ("name", "family", "parameters", "weights", "input contract", "options", "paper"):
            table.add_column(column, no_wrap=column in ("name", "parameters"))
        for entry in entries:
            with torch.device("meta"):
                count = sum(p.numel() for p in entry.factory().parameters())
            options = ", ".join(f"{k}={o.default}" for k, o in entry.info.get("options", {}).items())
            table.add_row(entry.name, entry.info.get("family", ""), f"{count / 1e6:.2f} M",
                          "training-free" if entry.info.get("weights_free") else
                          "bundled" if bundled_weights(entry.name) else "--weights FILE|random",
                          entry.info["contract"].describe(), options or "-", entry.info.get("paper", ""))
    elif kind is Kind.attacks:
        for column in ("name", "kind", "norm", "defaults", "paper"):
            table.add_column(column, no_wrap=column == "name")
        for entry in entries:
            norm = entry.info.get("norm", "linf")
            defaults = ", ".join(
                f"{k}={NONE_SHOWN.get(k, 'auto') if v is None else format_eps(v, norm) if k == 'eps' else v}"
                for k, v in entry.info.get("defaults", {}).items())
            table.add_row(entry.name, entry.info.get("kind", ""), entry.info.get("norm", ""), defaults,
                          entry.info.get("paper", ""))
    elif kind is Kind.datasets:
        for column in ("--data", "description", "layout"):
            table.add_column(column, no_wrap=column == "--data")
        for entry in sorted(entries, key=lambda e: (bool(e.info.get("format")), e.name)):  # bundled first
            name = f"{entry.name}:ROOT" if entry.info.get("format") else entry.name
            table.add_row(name, entry.info.get("description", ""), entry.info.get("layout", "bundled"))
    else:
        table.add_column("name", no_wrap=True)
        table.add_column("description")
        for entry in entries:
            table.add_row(entry.name, entry.info.get("description", entry.info.get("kind", "")))
    console.print(table)


@app.command()
def load(
    model: str = typer.Argument(..., help="Model configuration, e.g. uformer-t."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Checkpoint to verify (default: bundled)."),
    size: int = typer.Option(64, "--size", help="Side of the random test input."),
) -> None:
    """Verify a checkpoint: load it strictly, run one forward pass, print parameters and input contract."""
    import time

    import torch

    from udcbench.models import load_model

    try:
        loaded = load_model(model, weights=weights)
        info = loaded.info
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(1, 3, size, size, generator=generator)
        extras = {}
        if info.contract.extra_inputs:  # the embedded dataset's PSF and code stand in for a real sample's
            from udcbench.data import load_dataset

            sample_extras = load_dataset("udc-mini", limit=1)[0].extras
            extras = {k: sample_extras[k][None] for k in info.contract.extra_inputs}
        started = time.perf_counter()
        with torch.no_grad():
            out = loaded(image, **extras)
        elapsed = time.perf_counter() - started
        if out.shape != image.shape or not torch.isfinite(out).all():
            raise UdcbenchError(f"{info.name} gave {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())}) "
                                f"for a {tuple(image.shape)} input; the checkpoint or the model is broken")
        console.print(f"[green]ok[/] {info.name}: weights {info.weights}")
        console.print(f"  parameters  {info.parameters:,} ({info.parameters / 1e6:.3f} M)")
        console.print(f"  contract    {info.contract.describe()}")
        console.print(f"  forward     1×3×{size}×{size} -> {tuple(out.shape)} in {elapsed:.2f} s, output range "
                      f"[{out.min().item():.3f}, {out.max().item():.3f}]")
    except UdcbenchError as error:
        fail(error)


@app.command()
def train(
    model: str = typer.Option(..., "--model", "-m", help="Model configuration to train from a seeded init."),
    data: str = typer.Option("udc-mini", "--data", help="Dataset with a train split."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(128, "--crop", help="Crop side in pixels."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule)."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, crops and flips."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
) -> None:
    """Train a restoration model (how the bundled weights were made; see README)."""
    from udcbench.models.train import TrainConfig, train as train_model

    try:
        config = TrainConfig(model=model, data=data, steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed)
        command = invoked_command()
        if console.is_terminal:
            with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}"), console=console) as bar:
                task = bar.add_task("train", total=steps, loss=0.0)
                meta = train_model(config, out, command=command,
                                   progress=lambda step, loss: bar.update(task, completed=step, loss=loss))
        else:  # logs: one plain line every 5 %
            meta = train_model(config, out, command=command, progress=step_logger(steps))
        console.print(f"saved {out}: test PSNR {meta['test_psnr_degraded']} dB (degraded) → "
                      f"{meta['test_psnr_restored']} dB (restored)")
    except UdcbenchError as error:
        fail(error)


from udcbench import cli_run  # noqa: E402,F401  (registers `run` on app)
from udcbench import cli_data  # noqa: E402,F401  (registers `synth` and `psf` on app)
from udcbench import cli_defense  # noqa: E402,F401  (registers `finetune` on app)
from udcbench import cli_report  # noqa: E402,F401  (registers `leaderboard`, `check`, `plot` on app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
