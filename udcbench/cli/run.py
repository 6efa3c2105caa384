"""`udcbench run`: one run, a command-line cross product or a suite file, shared work, resume, executors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from udcbench.cli.common import attack_variant, console, errors, parse_attack_params
from udcbench.cli.progress import Reporter, progress_interval
from udcbench.cli.show import show_table
from udcbench.errors import UdcbenchError
from udcbench.outputs import check_folder
from udcbench.runner.prepare import prepare
from udcbench.runner.run import run as run_spec
from udcbench.runner.run import run_suite


def split_values(values: list[str], default: str, commas: bool = True) -> list[str]:
    """Repeated options, each possibly comma-separated: ['a,b', 'c'] -> ['a', 'b', 'c']; [] -> [default]."""
    out = [part.strip() for value in values for part in (value.split(",") if commas else [value]) if part.strip()]
    return out or [default]


def command_line_suite(models, attacks, defenses, eps_values, threats, seed, norm, common: dict, objective, mask,
                       weights, data, split, limit):
    """The cross product of several --model/--attack/--defense/--eps/--threat values as a Suite. Parameters given
    once apply to every attack that has them (an attack without an eps, like cw, runs once)."""
    from udcbench.registry import ATTACKS
    from udcbench.runner.suite import Suite, attack_settings
    from udcbench.spec import DataSpec, ModelSpec

    names = [attack_variant(name, norm) for name in attacks]
    given = {k: v for k, v in common.items() if v is not None}
    if eps_values:
        given["eps"] = eps_values
    settings = []
    for name in names:
        defaults = ATTACKS.get(name).info.get("defaults", {})
        params = given if len(names) == 1 else {k: v for k, v in given.items() if k in defaults}
        settings.extend(attack_settings(name, params, objective, mask))
    unused = sorted(k for k in given if not any(k in ATTACKS.get(n).info.get("defaults", {}) for n in names))
    if unused and len(names) > 1:
        raise UdcbenchError(f"no attack among {', '.join(names)} takes {', '.join(unused)}; drop it")
    return Suite(models=[ModelSpec(m, weights) for m in models], data=[DataSpec(data, split, limit)],
                 attacks=settings, defenses=defenses, threats=threats, seeds=[seed])


def run(
    model: list[str] = typer.Option([], "--model", "-m", help="Model name or family (`udcbench list models`), "
                                    "with options as NAME:KEY=VALUE (e.g. uformer-t:train_patch=256); repeat or "
                                    "comma-separate for several (default uformer)."),
    attack: list[str] = typer.Option([], "--attack", "-a", help="Attack name (`udcbench list attacks`); repeat or "
                                     "comma-separate for several (default pgd)."),
    defense: list[str] = typer.Option([], "--defense", "-d", help="Defense spec; compose with '+', e.g. a+b; "
                                      "repeat for several (default none)."),
    suite: Optional[Path] = typer.Option(None, "--suite", metavar="FILE", help="A suite YAML (e.g. "
                                         "benchmarks/ci.yaml): the cross product of its models, attacks, ε, "
                                         "defenses and threat models."),
    data: str = typer.Option("udc-mini", "--data", help="udc-mini, a folder of pairs, or FORMAT:ROOT "
                      "with FORMAT synth, toled, poled, mipi or pairs (`udcbench list datasets`)."),
    eps: list[str] = typer.Option([], "--eps", help="Budget: L∞ as a fraction like 8/255, or an L2 norm (e.g. 1.0) "
                                  "for L2 attacks; several: --eps 1/255,2/255,4/255,8/255 (default: the attack's)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Attack iterations (default: the attack's)."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Step size, e.g. 2/255 (default: the attack's)."),
    restarts: Optional[int] = typer.Option(None, "--restarts", help="Random restarts; the strongest per image."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Query budget of black-box attacks."),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf or l2: picks the attack's variant (pgd-l2, ...)."),
    attack_param: list[str] = typer.Option([], "--attack-param", "-p", help="KEY=VALUE for any other attack "
                                           "parameter (repeatable), e.g. -p basis=dct."),
    surrogate: Optional[str] = typer.Option(None, "--surrogate", help="Surrogate of the transfer attack: a model "
                                           "name, or a distilled surrogate file written by `udcbench distill` "
                                           "(PATH.safetensors)."),
    objective: str = typer.Option("mse-clean", "--objective", help="What the attack maximises: mse-clean, mse-gt, "
                                  "l1-clean, lpips-clean, targeted:input or targeted:IMAGE."),
    metrics: list[str] = typer.Option([], "--metrics", help="Metrics scored besides PSNR and SSIM (always "
                                      "scored), comma-separated: lpips-alex, lpips-vgg, pyiqa:NAME or any "
                                      "registered one (`udcbench list metrics`), e.g. --metrics "
                                      "psnr,ssim,lpips-alex."),
    lpips: Optional[str] = typer.Option(None, "--lpips", help="Also score LPIPS with this backbone (alex or "
                                        "vgg; needs local weights, see README); the same as --metrics lpips-NET."),
    mask: Optional[str] = typer.Option(None, "--mask", help="Restrict δ to a region: box:TOP,LEFT,HEIGHT,WIDTH "
                                       "(fractions) or a PNG (white = may change)."),
    radius: list[str] = typer.Option([], "--radius", help="Certified PSNR at these L2 radii, e.g. --radius "
                                     "0.1,0.25,0.5, for runs whose defense smooths (smooth:sigma=0.25)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Checkpoint file, or 'random' (default: bundled)."),
    threat: list[str] = typer.Option([], "--threat", help="gray-box (attack the undefended model, then defend: "
                                     "the paper's setting) or adaptive (attack through the defense: BPDA, EOT); "
                                     "repeat for both."),
    eot: Optional[int] = typer.Option(None, "--eot", help="Adaptive threat: draws of a randomised defense per "
                                      "objective evaluation (default 2)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random starts (recorded with every row)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N images."),
    split: str = typer.Option("test", "--split", help="Dataset split."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto (CUDA when present; default "
                                         "cpu, or the suite's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch (default 1; a batch "
                                             "draws its random starts once, so it is part of the run's identity)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default) or bf16 (autocast, for GPUs)."),
    eps_batch: bool = typer.Option(False, "--eps-batch", help="Craft the gray-box PGD runs of several --eps values "
                                   "of an image as one batch (faster on GPUs; a setting of the run's identity)."),
    memory: Optional[str] = typer.Option(None, "--memory", help="auto (default: checkpoint only where a plain "
                                         "white-box step would not fit; refused up front if neither fits), low "
                                         "(activation checkpointing: less memory, more time, same numbers) or "
                                         "normal (never)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each network once per image size; "
                                 "eager where compiling fails, is slower or differs (one warning line)."),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="float (default: metrics on the float outputs) "
                                          "or 8bit (outputs rounded to 8 bits first, as papers that save PNGs)."),
    executor: str = typer.Option("local", "--executor", help="local (default) or ray: run the planned jobs as "
                                 "Ray tasks."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, or host:port); "
                                          "default: a local cluster for this command."),
    gpus_per_task: Optional[float] = typer.Option(None, "--gpus-per-task", help="Ray: GPUs each task declares "
                                                  "when running on CUDA (default 1)."),
    out: Path = typer.Option(Path("udcbench-out"), "--out", "-o", metavar="DIR",
                             help="Folder for results.db and leaderboards."),
) -> None:
    """Attack restoration models on a dataset and score clean, attacked and defended outputs (PSNR, SSIM).

    Several values, or --suite FILE, run the cross product, sharing clean outputs, purified inputs and gray-box
    adversarial examples between runs; rerunning an interrupted command finishes only what is missing.

    Example: udcbench run -m uformer -a pgd --eps 8/255 --limit 4 -o runs/demo"""
    from udcbench.runner.executors import check_executor
    from udcbench.runner.suite import load_suite

    check_folder(out)  # a folder that cannot be written is refused before minutes of work
    check_executor(executor)
    progress_interval()  # a bad UDCBENCH_PROGRESS_INTERVAL is refused before any model loads
    if any(not value.strip(" ,") for value in eps):
        raise UdcbenchError("--eps is empty; give a budget such as --eps 8/255, or leave --eps out for the "
                            "attack's default")
    if limit is not None and limit < 1:
        raise UdcbenchError(f"--limit must be at least 1, got {limit}; e.g. --limit 8, or leave it out for every image")
    if suite is not None:
        clashing = [flag for flag, value in (("--model", model), ("--attack", attack), ("--defense", defense),
                                             ("--eps", eps), ("--threat", threat)) if value]
        if clashing:
            raise UdcbenchError(f"{', '.join(clashing)} cannot be combined with --suite; edit {suite} instead")
        plan_suite = load_suite(suite)
        if limit is not None:  # a quick look at a suite: fewer images of each of its datasets
            plan_suite.data = [dataclasses.replace(d, limit=limit) for d in plan_suite.data]
    else:
        params = {"steps": steps, "alpha": alpha, "restarts": restarts, "queries": queries,
                  "surrogate": surrogate, **parse_attack_params(attack_param)}
        plan_suite = command_line_suite(
            split_values(model, "uformer"), split_values(attack, "pgd"), split_values(defense, "none", False),
            split_values(eps, None) if eps else [], split_values(threat, "gray-box"), seed, norm, params,
            objective, mask, weights, data, split, limit)
        plan_suite.lpips, plan_suite.eot = lpips, eot
    if radius:  # replaces a suite's own radii
        plan_suite.radius = split_values(radius, "")
    if metrics:  # added to a suite's own metrics
        plan_suite.metrics = list(dict.fromkeys(plan_suite.metrics + split_values(metrics, "")))
    for key, value in (("device", device), ("batch_size", batch_size), ("precision", precision),
                       ("scoring", scoring), ("memory", memory), ("eps_batch", eps_batch or None),
                       ("compile", compile or None)):
        if value is not None:
            setattr(plan_suite, key, value)
    specs = plan_suite.specs()
    if len(specs) == 1 and suite is None and executor == "local":
        run_single(specs[0], out)
    else:
        run_many(plan_suite, specs, out, executor, address, gpus_per_task, suite)


def progress_bar(total: int, description: str, unit: str = "images"):
    """(bar, progress) for a loop of `total` units: one Reporter (cli/progress.py) — a rich bar with an ETA from
    this command's pace on a terminal, plain `progress:` lines in logs — to enter (`with bar:`) and to call."""
    reporter = Reporter(console, description, unit, total=total)
    return reporter, reporter


def run_single(spec, out: Path) -> None:
    from udcbench.report import leaderboard
    from udcbench.runner.store import check_file

    check_file(out / "results.db")  # a 0-byte or foreign results.db: one line before any model loads
    job = prepare(spec)
    info = job.model.info
    if info.resolved_from:
        console.print(f"model [bold]{escape(info.resolved_from)}[/] → [bold]{escape(info.name)}[/] (the configuration with "
                      f"bundled weights; {info.parameters / 1e6:.2f} M parameters)")
    if info.weights == "random":
        console.print("[yellow]warning:[/] random (untrained) weights; the leaderboard marks them")
    console.print(escape(f"{info.name} · {job.attack.describe()} · objective {job.objective.name} · "
                         f"defense {leaderboard.defense_label(job.defense.spec, job.defense_params)} "
                         f"· threat {job.labels['threat']} "
                         f"· {job.dataset.info.name} ({len(job.dataset)} images) · seed {spec.seed} · {job.device} · "
                         f"run {job.run_hash}"))
    for note in job.notes:
        console.print(escape(note), highlight=False, soft_wrap=True)
    for warning in job.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    bar, progress = progress_bar(len(job.dataset), "attacking")
    with interruptible(out):
        with bar:
            frame = run_spec(spec, out=out, progress=progress, job=job)
    if frame.attrs.get("skipped"):
        console.print(f"resumed: {frame.attrs['skipped']} images already in {escape(str(out / 'results.db'))}, "
                      f"{frame.attrs['computed']} computed now")
    shared_out_line(frame.attrs, out)
    show_leaderboard(out)


def run_many(plan_suite, specs, out: Path, executor: str, address, gpus_per_task, suite_file) -> None:
    from udcbench.runner.plan import make_plan
    from udcbench.runner.store import check_file

    check_file(out / "results.db")  # as in run_single
    plan = make_plan(specs)  # every run validated and resolved before anything is written
    name = f"suite {plan_suite.name}" if suite_file else "cross product"
    folded = f" ({plan_suite.skipped} adaptive × no-defense runs are the gray-box ones)" if plan_suite.skipped else ""
    first = plan.jobs[0]
    console.print(f"{name}: {len(plan.jobs)} runs = {plan_suite.describe()}{folded} · {plan.images} (run, image) "
                  f"rows · seed{'s' if len(plan_suite.seeds) > 1 else ''} {', '.join(map(str, plan_suite.seeds))} · "
                  f"{first.device} · batch {first.batch_size} · {first.precision} · executor {executor}")
    for note in dict.fromkeys(n for job in plan.jobs for n in job.notes):
        console.print(escape(note), highlight=False, soft_wrap=True)
    for warning in dict.fromkeys(w for job in plan.jobs for w in job.warnings):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    bar, progress = progress_bar(plan.images, "running", "rows")
    with interruptible(out):
        with bar:
            frame = run_suite(specs, out=out, progress=progress, executor=executor, address=address,
                              gpus_per_task=gpus_per_task, plan=plan)
    stats = frame.attrs
    if stats.get("skipped"):
        console.print(f"resumed: {stats['skipped']} rows already in {escape(str(out / 'results.db'))}, {stats['computed']} "
                      "computed now")
    shared_out_line(stats, out)
    console.print(shared_work_line(stats["work"]))
    show_leaderboard(out)


class Terminated(KeyboardInterrupt):
    """SIGTERM during a run, raised like Ctrl-C's KeyboardInterrupt so that it unwinds the same way."""


class interruptible:
    """`with interruptible(out):` around a run. Ctrl-C or SIGTERM while running: the store's open transaction
    rolls back (only whole batches are ever stored), this process's claims are released, the progress bar
    (entered inside) closes, and one line on stderr says how to finish; exit 130 (Ctrl-C) or 143 (SIGTERM).
    SIGTERM's previous handler is restored after. Before the run starts (imports, loading models) nothing is
    written and both signals keep their defaults."""

    def __init__(self, out: Path):
        self.out, self.installed, self.previous = out, False, None

    @staticmethod
    def terminate(signum, frame):
        raise Terminated()

    def __enter__(self):
        import signal

        try:
            self.previous, self.installed = signal.signal(signal.SIGTERM, self.terminate), True
        except ValueError:  # not the main thread (an embedding application): SIGTERM stays as it was
            pass
        return self

    def __exit__(self, kind, error, traceback):
        import signal

        if self.installed:  # first, so that a second SIGTERM while the line is printed acts as before
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)
        if isinstance(error, KeyboardInterrupt):
            errors.print(f"interrupted: every finished batch is stored in {self.out / 'results.db'}; run the same "
                         "command again to finish only what is missing", highlight=False, soft_wrap=True)
            raise typer.Exit(143 if isinstance(error, Terminated) else 130)
        return False


def shared_out_line(stats: dict, out: Path) -> None:
    """Where another process on the same --out stored rows while this one ran (claims.py): who computed what."""
    if stats.get("others"):
        console.print(escape(f"computed {stats['computed']} rows, {stats['others']} by another process on "
                             f"{out / 'results.db'}"), highlight=False)


def shared_work_line(work: dict) -> str:
    """'shared work: 24 clean outputs computed, 48 reused; … — saved 1,234 of 5,678 network passes (22 %)'."""
    parts = []
    for kind in ("clean output", "defended clean output", "adversarial example"):
        computed, reused = work["computed"].get(kind, 0), work["reused"].get(kind, 0)
        if computed or reused:
            parts.append(f"{computed} {kind}s computed, {reused} reused")
    total = work["passes"] + work["saved"]
    share = f" ({100 * work['saved'] / total:.0f} %)" if total else ""
    return (f"shared work: {'; '.join(parts) or 'nothing computed'} — saved {work['saved']:,} of {total:,} network "
            f"passes{share} (restoration model and diffusion prior, forward or backward, per image)")


def show_leaderboard(out: Path) -> None:
    from udcbench.report import leaderboard
    from udcbench.runner.store import open_existing

    store = open_existing(out)
    try:
        table = leaderboard.summarise(store.rows())
    finally:
        store.close()
    show_table(table, f"leaderboard ({out / 'leaderboard.md'})")
    comparison = leaderboard.threat_comparison(table)
    if not comparison.empty:
        show_table(comparison, "gray-box vs adaptive (defended attacked PSNR)")


COMMANDS = {"run": run}  # name -> function, in --help order
