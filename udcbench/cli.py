"""The `udcbench` command line: parses, calls the Python API, prints with rich. Nothing else lives here."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from udcbench.errors import UdcbenchError

app = typer.Typer(help="Adversarial robustness benchmark for under-display-camera (UDC) image restoration.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# piped or captured output gets a wide fixed width so tables stay readable in logs (rich would use 80)
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)


def fail(error: Exception) -> None:
    errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


SHORT_LABELS = {"psnr_clean_gt": "clean PSNR", "ssim_clean_gt": "clean SSIM", "psnr_adv_gt": "attacked PSNR",
                "ssim_adv_gt": "attacked SSIM", "psnr_adv_clean": "PSNR vs clean out",
                "ssim_adv_clean": "SSIM vs clean out"}
ALWAYS_SHOWN = ("model", "defense", "attack", "eps")


def show_table(frame, title: str) -> None:
    """The leaderboard as a rich table; key columns with one value for all rows move into the caption."""
    from udcbench.report.leaderboard import KEYS

    constant = [c for c in KEYS if c not in ALWAYS_SHOWN and frame[c].nunique(dropna=False) <= 1 and len(frame)]
    shown = [c for c in frame.columns if c not in constant]
    caption = " · ".join(f"{c} {frame[c].iloc[0]}" for c in constant)
    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    for column in shown:
        numeric = frame[column].dtype.kind in "fi"
        table.add_column(SHORT_LABELS.get(column, column), justify="right" if numeric else "left",
                         no_wrap=numeric or column in ("model", "eps", "weights"))
    for values in frame[shown].itertuples(index=False):
        cells = []
        for column, value in zip(shown, values):
            if isinstance(value, float):
                cells.append(f"{value:.4f}" if column.startswith("ssim") else f"{value:.2f}")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    console.print(table)


@app.command()
def run(
    model: str = typer.Option("uformer", "--model", "-m", help="Model name or family (`udcbench list models`)."),
    attack: str = typer.Option("pgd", "--attack", "-a", help="Attack name (`udcbench list attacks`)."),
    defense: str = typer.Option("none", "--defense", "-d", help="Defense spec; compose with '+', e.g. a+b."),
    data: str = typer.Option("udc-mini", "--data", help="Registered dataset name or a folder of pairs."),
    eps: str = typer.Option("8/255", "--eps", help="L∞ budget: a fraction like 8/255 or a number like 0.0314."),
    steps: int = typer.Option(20, "--steps", help="Attack iterations."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Step size (default eps/4)."),
    objective: str = typer.Option("mse-clean", "--objective", help="What the attack maximises: mse-clean, mse-gt."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Checkpoint file, or 'random' (default: bundled)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random starts (recorded with every row)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    out: Path = typer.Option(Path("udcbench-out"), "--out", "-o", help="Folder for results.db and leaderboards."),
) -> None:
    """Attack a restoration model on a dataset and score clean / attacked outputs (PSNR, SSIM)."""
    from udcbench import api
    from udcbench.report import leaderboard
    from udcbench.runner.store import open_existing
    from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

    try:
        if limit is not None and limit < 1:
            raise UdcbenchError(f"--limit must be at least 1, got {limit}")
        spec = RunSpec(model=ModelSpec(model, weights), defense=DefenseSpec(defense),
                       attack=AttackSpec.of(attack, objective=objective, eps=eps, steps=steps, alpha=alpha),
                       data=DataSpec(data, split, limit), seed=seed, device=device)
        job = api.prepare(spec)
        info = job.model.info
        if info.resolved_from:
            console.print(f"model [bold]{info.resolved_from}[/] → [bold]{info.name}[/] (the configuration with "
                          f"bundled weights; {info.parameters / 1e6:.2f} M parameters)")
        if info.weights == "random":
            console.print("[yellow]warning:[/] random (untrained) weights; the leaderboard marks them")
        console.print(f"{info.name} · {job.attack.describe()} · objective {job.objective.name} · defense {job.defense.spec} "
                      f"· {job.dataset.info.name} ({len(job.dataset)} images) · seed {seed} · {job.device} · "
                      f"run {job.run_hash}")
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[image]}"))
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("attacking", total=len(job.dataset), image="")

            def progress(done: int, total: int, image: str) -> None:
                bar.update(task, completed=done, total=total, image=image)

            frame = api.run(spec, out=out, progress=progress, job=job)
        if frame.attrs.get("skipped"):
            console.print(f"resumed: {frame.attrs['skipped']} images already in {out / 'results.db'}, "
                          f"{frame.attrs['computed']} computed now")
        store = open_existing(out)
        try:
            table = leaderboard.summarise(store.rows())
        finally:
            store.close()
        show_table(table, f"leaderboard ({out / 'leaderboard.md'})")
    except UdcbenchError as error:
        fail(error)


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

        for column in ("name", "family", "parameters", "weights", "input contract", "paper"):
            table.add_column(column, no_wrap=column in ("name", "parameters"))
        for entry in entries:
            with torch.device("meta"):
                count = sum(p.numel() for p in entry.factory().parameters())
            table.add_row(entry.name, entry.info.get("family", ""), f"{count / 1e6:.2f} M",
                          "training-free" if entry.info.get("weights_free") else
                          "bundled" if bundled_weights(entry.name) else "--weights FILE|random",
                          entry.info["contract"].describe(), entry.info.get("paper", ""))
    elif kind is Kind.attacks:
        for column in ("name", "kind", "norm", "defaults", "paper"):
            table.add_column(column, no_wrap=column == "name")
        for entry in entries:
            defaults = ", ".join(f"{k}={'eps/4' if v is None and k == 'alpha' else format_eps(v) if k == 'eps' else v}"
                                 for k, v in entry.info.get("defaults", {}).items())
            table.add_row(entry.name, entry.info.get("kind", ""), entry.info.get("norm", ""), defaults,
                          entry.info.get("paper", ""))
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


class Format(str, Enum):
    md = "md"
    csv = "csv"


@app.command("leaderboard")
def leaderboard_(
    directory: Path = typer.Argument(..., help="A --out folder of `udcbench run`."),
    format: Format = typer.Option(Format.md, "--format", "-f", help="md or csv (printed and written)."),
) -> None:
    """Re-render the leaderboard of a run folder from its stored rows."""
    from udcbench.report import leaderboard
    from udcbench.runner.store import open_existing

    try:
        store = open_existing(directory)
        try:
            table = leaderboard.summarise(store.rows())
        finally:
            store.close()
        leaderboard.write(table, directory, formats=(format.value,))
        text = leaderboard.to_markdown(table) if format is Format.md else leaderboard.to_csv(table)
        sys.stdout.write(text)
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
        command = "udcbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if console.is_terminal:
            with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}"), console=console) as bar:
                task = bar.add_task("train", total=steps, loss=0.0)
                meta = train_model(config, out, command=command,
                                   progress=lambda step, loss: bar.update(task, completed=step, loss=loss))
        else:  # logs: one plain line every 5 %
            every = max(1, steps // 20)

            def log(step: int, loss: float) -> None:
                if step % every == 0 or step == steps:
                    console.print(f"step {step}/{steps} loss {loss:.4f}", highlight=False)

            meta = train_model(config, out, command=command, progress=log)
        console.print(f"saved {out}: test PSNR {meta['test_psnr_degraded']} dB (degraded) → "
                      f"{meta['test_psnr_restored']} dB (restored)")
    except UdcbenchError as error:
        fail(error)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
