"""`udcbench list`, `udcbench load`, `udcbench train` and `udcbench distill`: what is registered, checking a
checkpoint, and how the bundled weights (and the bundled distilled surrogate) were made."""

from __future__ import annotations

import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.markup import escape
from rich.table import Table

from udcbench.cli.common import console, invoked_command, step_logger
from udcbench.errors import UdcbenchError
from udcbench.outputs import check_file

NONE_SHOWN = {"const": "unset"}  # how `list attacks` shows a None default that does not mean "chosen for you"


class Kind(str, Enum):
    models = "models"
    attacks = "attacks"
    defenses = "defenses"
    datasets = "datasets"
    metrics = "metrics"


def list_kind(text: str) -> Kind:
    """`udcbench list KIND`: the kind, or one error line with the closest kind and every choice."""
    from udcbench.registry import did_you_mean

    choices = [kind.value for kind in Kind]
    if text not in choices:
        raise UdcbenchError(f"unknown kind {text!r}{did_you_mean(text, choices)}; choose from {', '.join(choices)}")
    return Kind(text)


def list_(kind: str = typer.Argument(..., help="What to list: models, attacks, defenses, datasets or metrics.")
          ) -> None:
    """List registered models, attacks, defenses, datasets or metrics.

    Example: udcbench list attacks"""
    from udcbench import registry
    from udcbench.models import bundled_weights, family_caption
    from udcbench.report.leaderboard import format_eps

    kind = list_kind(kind)
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
        table.caption = escape(family_caption())
    elif kind is Kind.attacks:
        for column in ("name", "kind", "norm", "defaults", "needs", "paper"):
            table.add_column(column, no_wrap=column == "name")
        for entry in entries:
            norm = entry.info.get("norm", "linf")
            defaults = ", ".join(
                f"{k}={NONE_SHOWN.get(k, 'auto') if v is None else format_eps(v, norm) if k == 'eps' else v}"
                for k, v in entry.info.get("defaults", {}).items())
            table.add_row(entry.name, entry.info.get("kind", ""), entry.info.get("norm", ""), defaults,
                          escape(registry.needs(entry)), entry.info.get("paper", ""))
    elif kind is Kind.datasets:
        for column in ("--data", "description", "layout"):
            table.add_column(column, no_wrap=column == "--data")
        for entry in sorted(entries, key=lambda e: (bool(e.info.get("format")), e.name)):  # bundled first
            name = f"{entry.name}:ROOT" if entry.info.get("format") else entry.name
            table.add_row(name, entry.info.get("description", ""), entry.info.get("layout", "bundled"))
    elif kind is Kind.metrics:
        _metric_rows(table)
    else:
        table.add_column("name", no_wrap=True)
        table.add_column("description")
        table.add_column("needs")
        for entry in entries:
            table.add_row(entry.name, entry.info.get("description", entry.info.get("kind", "")),
                          escape(registry.needs(entry)))
    console.print(table)


def _metric_rows(table) -> None:
    """`udcbench list metrics`: every registered metric's descriptor (udcbench.metrics.base)."""
    from udcbench.metrics.base import registered
    from udcbench.metrics.pyiqa_backend import caption
    from udcbench.registry import needs_met

    for column in ("name", "better", "unit", "digits", "check ±", "min px", "columns", "needs", "description"):
        table.add_column(column, no_wrap=column in ("name", "better"))
    for metric in registered():
        pairs = ", ".join(metric.pairs)
        table.add_row(metric.name + (" (always)" if metric.default else ""),
                      "higher" if metric.higher_is_better else "lower", metric.unit or "-", str(metric.digits),
                      f"{metric.tolerance:g}", str(metric.min_size), f"{metric.column}_{{{pairs}}}",
                      escape(needs_met(metric.needs, metric.check)), metric.description)
    table.caption = escape(caption())


def load(
    model: str = typer.Argument(..., help="Model configuration, e.g. uformer-t."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Checkpoint to verify (default: bundled)."),
    size: int = typer.Option(64, "--size", help="Side of the random test input."),
) -> None:
    """Verify a checkpoint: load it strictly, run one forward pass, print parameters and input contract.

    Example: udcbench load uformer-t --weights Uformer_T.pth"""
    import time

    import torch

    from udcbench.models import load_model

    if not 16 <= size <= 4096:
        raise UdcbenchError(f"--size must lie in [16, 4096] pixels (the side of the test input), got {size}; e.g. "
                            "--size 64")
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


def train(
    model: str = typer.Option(..., "--model", "-m", help="Model configuration to train from a seeded init."),
    data: str = typer.Option("udc-mini", "--data", help="Dataset with a train split."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Crops per step."),
    crop: int = typer.Option(128, "--crop", help="Crop side in pixels."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule)."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, crops and flips."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Output .safetensors file."),
) -> None:
    """Train a restoration model from a seeded init, as the bundled weights were made (see README).

    Example: udcbench train -m uformer-nano --steps 1500 -o nano.safetensors"""
    from udcbench.models.train import TrainConfig, check_training, train as train_model

    check_training(steps, batch_size, crop, lr)
    check_file(out, "--out", (".safetensors",))
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


def distill(
    target: str = typer.Option(..., "--target", "-t", help="Black-box model to distil (a name, `udcbench list "
                               "models`); only its outputs are used."),
    weights: Optional[str] = typer.Option(None, "--weights", help="The target's checkpoint, or 'random' "
                                          "(default: bundled)."),
    data: str = typer.Option("udc-mini", "--data", help="Dataset: its train split is queried, its test split "
                             "scores the fidelity."),
    queries: int = typer.Option(..., "--queries", "-q", help="Query budget: target evaluations of one crop each "
                                "(never exceeded; the fidelity check's test images are counted apart)."),
    arch: str = typer.Option("nafnet-nano", "--arch", help="Surrogate architecture, trained from a seeded "
                             "random init."),
    crop: int = typer.Option(64, "--crop", help="Side of the queried crops in pixels."),
    patch: Optional[int] = typer.Option(None, "--patch", help="Side of the training patches cut from the queried "
                                        "crops (default: the whole crop)."),
    steps: int = typer.Option(800, "--steps", help="Optimiser steps of the surrogate."),
    batch_size: int = typer.Option(16, "--batch-size", help="Crops per query batch and per optimiser step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (cosine schedule)."),
    noise: float = typer.Option(0.05, "--noise", help="In round 1 every second query is the previous crop "
                                "plus Gaussian noise of σ drawn from [0, NOISE] (0: clean crops only)."),
    probe: float = typer.Option(0.5, "--probe", help="Share of the queries and steps spent in a second round "
                                "that queries the half-trained surrogate's adversarial points (FGSM, L∞ 8/255)."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, crops, flips, noise and batch order."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Score the fidelity on the first N test "
                                             "images only (default all)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads while distilling (default: torch's; "
                                          "the same count reproduces the same bytes)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Output .safetensors file (use with --attack "
                             "transfer --surrogate FILE or --defense smooth:surrogate=FILE)."),
) -> None:
    """Distil a black-box model into a white-box surrogate from its outputs alone (DUCD, Li et al. 2024).

    Example: udcbench distill -t uformer -q 2048 -o surrogate.safetensors"""
    from udcbench.models.distill import DistillConfig, distill as run_distill

    config = DistillConfig(target=target, weights=weights, data=data, queries=queries, arch=arch, crop=crop,
                           patch=patch, steps=steps, batch_size=batch_size, lr=lr, noise=noise, probe=probe,
                           seed=seed, device=device, threads=threads, eval_limit=eval_limit)
    with distill_progress(queries, steps) as progress:
        meta = run_distill(config, out, progress=progress)
    console.print(f"saved {out}: {meta['arch']} surrogate of {meta['target']} from {meta['queries']} queries; "
                  f"fidelity {meta['fidelity_psnr']} dB PSNR to the target on {meta['eval_queries']} test images "
                  f"(evaluation queries, counted apart); test PSNR {meta['test_psnr_surrogate']} dB (surrogate) vs "
                  f"{meta['test_psnr_target']} dB (target)", highlight=False)


@contextmanager
def distill_progress(queries: int, steps: int):
    """progress(stage, done, total, loss) for `distill`: two rich bars on a terminal (shown from the first query
    on, so that a refused setting prints its error line alone), plain lines every 5 % in logs (as `train` does)."""
    if not console.is_terminal:
        every = {"query": max(1, queries // 20), "train": max(1, steps // 20)}
        shown = {"query": 0, "train": 0}  # the last 5 % mark printed (queries arrive a batch at a time)
        started = time.time()

        def log(stage: str, done: int, total: int, loss) -> None:
            if done // every[stage] > shown[stage] or done == total:
                shown[stage] = done // every[stage]
                value = f" loss {loss:.4f}" if loss is not None else ""
                console.print(f"{stage} {done}/{total}{value} ({time.time() - started:.0f} s)", highlight=False)

        yield log
        return
    bars: list[Progress] = []  # started by the first update, i.e. after every check passed and nothing failed
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int, loss) -> None:
        if not bars:
            bars.append(Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                                 console=console))
            bars[0].start()
            tasks.update(query=bars[0].add_task("querying", total=queries, loss=""),
                         train=bars[0].add_task("training", total=steps, loss=""))
        bars[0].update(tasks[stage], completed=done, loss="" if loss is None else f"loss {loss:.4f}")

    try:
        yield update
    finally:
        for bar in bars:
            bar.stop()


COMMANDS = {"list": list_, "load": load, "train": train, "distill": distill}  # name -> function, in --help order
