"""`udcbench evaluate`: the standard evaluation (runner/standard.py) of one system, written as a leaderboard entry
(report/evaluation.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from udcbench.cli.common import console, errors
from udcbench.cli.run import interruptible, progress_bar
from udcbench.outputs import check_folder


def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="Model name or family (`udcbench list "
                              "models`), with options as NAME:KEY=VALUE."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Checkpoint file, or 'random' "
                                          "(default: the bundled weights)."),
    data: str = typer.Option(..., "--data", help="udc-mini, a folder of pairs, or FORMAT:ROOT "
                             "(`udcbench list datasets`); the whole split is evaluated."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    defense: str = typer.Option("none", "--defense", "-d", help="The defense of the evaluated "
                                "system, e.g. purify+ft; every attack then runs through it (threat adaptive)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (CUDA when present)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Images per batch (recorded: a batch "
                                   "draws its random starts once)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images: a smoke test; "
                                        "the entry is marked partial and is not comparable."),
    out: Path = typer.Option(Path("udcbench-evaluation"), "--out", "-o",
                             help="Folder for results.db, evaluation.json and evaluation.md."),
) -> None:
    """Run the standard protocol (udc-standard-v1) on one system and write a leaderboard entry.

    udc-standard-v1: PGD-20 L∞ at 1, 2, 4 and 8/255 (α = ε/4), C&W-L2 (fixed c = 0.03, 1,000 steps), SimBA (4/255,
    1,000 iterations); seed 0, objective mse-clean; with --defense every attack runs through the defense (threat
    adaptive, EOT 2 for a randomised one). Writes results.db, evaluation.json and evaluation.md to --out: clean
    and robust PSNR/SSIM (robust: per image the worst of the clean output, PGD and SimBA, all within L∞ 8/255),
    per-attack numbers, weights digest, versions. Rerunning a killed evaluation finishes only what is missing.

    Example: udcbench evaluate -m uformer --data udc-mini -o runs/eval-uformer"""
    from udcbench.runner import standard
    from udcbench.runner.store import check_file

    check_folder(out)  # every check before anything is written
    check_file(out / "results.db")
    evaluation = standard.plan_evaluation(model, weights=weights, data=data, split=split, defense=defense,
                                          device=device, batch_size=batch_size, limit=limit)
    protocol, first = evaluation.protocol, evaluation.first
    info, images = first.model.info, len(first.dataset)
    console.print(escape(f"{protocol.name} ({protocol.digest}) · {info.name} · defense {first.labels['defense']} · "
                         f"threat {first.labels['threat']} · {first.dataset.info.name}/{first.labels['split']} "
                         f"({images} image{'s' if images != 1 else ''}) · {len(evaluation.runs)} runs · seed "
                         f"{protocol.seed} · {first.device} · batch {first.batch_size}"),
                  highlight=False, soft_wrap=True)
    if limit is not None:
        console.print(f"[yellow]warning:[/] --limit {limit}: a partial entry (marked so), not comparable with "
                      "others; leave --limit out for one to publish", highlight=False, soft_wrap=True)
    for warning in dict.fromkeys(w for job in evaluation.plan.jobs for w in job.warnings):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    bar, progress = progress_bar(evaluation.plan.images, "evaluating", "rows")
    with interruptible(out):
        with bar:
            entry = standard.run_evaluation(evaluation, out, progress)
    if entry["run"]["rows_resumed"]:
        console.print(escape(f"resumed: {entry['run']['rows_resumed']} rows already in {out / 'results.db'}, "
                             f"{entry['run']['rows_computed_now']} computed now"), highlight=False, soft_wrap=True)
    show_entry(entry, out)


def show_entry(entry: dict, out: Path) -> None:
    from udcbench.report.evaluation import table_lines

    results = entry["results"]
    for key, attack in results["attacks"].items():
        inside = "robust" if attack["robust"] else "beside"
        console.print(escape(f"  {key:<10} PSNR {attack['psnr']:6.2f}  SSIM {attack['ssim']:.4f}  "
                             f"‖δ‖∞ {attack['linf'] * 255:5.2f}/255  ‖δ‖₂ {attack['l2']:7.3f}  ({inside})"),
                      highlight=False)
    robust = results["robust"]
    console.print(escape(f"clean PSNR {results['clean']['psnr']:.2f} SSIM {results['clean']['ssim']:.4f} · robust "
                         f"PSNR {robust['psnr']:.2f} SSIM {robust['ssim']:.4f} (per image the worst of "
                         f"{', '.join(robust['over'])}, within {robust['budget']})"), highlight=False, soft_wrap=True)
    for line in table_lines(entry):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(escape(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'}"), highlight=False,
                  soft_wrap=True)
    if not entry["complete"]:
        errors.print(f"[yellow]warning:[/] partial entry (--limit {entry['data']['limit']}): not comparable",
                     highlight=False)


COMMANDS = {"evaluate": evaluate}  # name -> function, in --help order
