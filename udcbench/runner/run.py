"""Running: a prepared plan is executed into a results store and a leaderboard (`run`, `run_suite`,
`run_plan`), and a stored (run, image) is recomputed exactly for the image grid (`replay`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

from udcbench.errors import SpecError
from udcbench.report import leaderboard
from udcbench.runner.execute import Job, SharedWork, score_batch
from udcbench.runner.executors import check_executor, execute_plan
from udcbench.runner.plan import Group, Plan, batches, make_plan
from udcbench.runner.prepare import prepare
from udcbench.runner.store import ResultStore, check_file, open_existing
from udcbench.spec import RunSpec

Progress = Callable[[int, int, str], None]


def run(spec: RunSpec, out: str | Path | None = None, progress: Progress | None = None,
        job: Job | None = None) -> pd.DataFrame:
    """Run one benchmark spec; rows go to `out/results.db` (or memory when out is None) and the leaderboard
    is re-rendered into `out`. Returns this run's rows (all images of the selection, resumed ones included)."""
    job = job or prepare(spec)  # every check happens before anything is written
    frame = run_plan(Plan(jobs=[job], groups=[Group([job])]), out, progress)
    frame.attrs.update(run_hash=job.run_hash)
    return frame


def run_suite(specs: list[RunSpec], out: str | Path | None = None, progress: Progress | None = None,
              executor: str = "local", address: str | None = None, gpus_per_task: float | None = None,
              plan=None) -> pd.DataFrame:
    """Run many specs (a suite, or the cross product of a command line) sharing work between them; returns
    the rows of all of them, with counts and the shared-work tally in `.attrs`."""
    plan = plan or make_plan(specs)  # every spec is validated before anything is written
    return run_plan(plan, out, progress, executor=executor, address=address, gpus_per_task=gpus_per_task)


def run_plan(plan, out: str | Path | None = None, progress: Progress | None = None, executor: str = "local",
             address: str | None = None, gpus_per_task: float | None = None) -> pd.DataFrame:
    check_executor(executor)
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise SpecError(f"--out {out} is a file; pass a folder")
        check_file(out / "results.db")  # a 0-byte or foreign results.db is refused before anything is written
        out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(None if out is None else out / "results.db")
    try:
        for job in plan.jobs:
            store.register_run(job.run_hash, {"spec": job.spec.to_dict(), "resolved_labels": job.labels})
        stats = execute_plan(plan, store, progress, executor=executor, address=address, gpus_per_task=gpus_per_task)
        rows = store.rows()
        if out is not None:
            try:
                leaderboard.write(leaderboard.summarise(rows), out)
            except OSError as error:  # a full disk, a read-only folder: the rows are safe, the files can wait
                raise store.write_error(error, f"the leaderboard files in {out}") from None
    finally:
        store.close()
    keep = pd.Series(False, index=rows.index)
    for job in plan.jobs:
        keep |= (rows["run_hash"] == job.run_hash) & rows["image"].isin(set(job.dataset.names()))
    rows = rows[keep].reset_index(drop=True)
    rows.attrs.update(**stats)
    return rows


def replay(out_dir: str | Path, run_hash: str, image: str) -> dict:
    """Recompute one stored (run, image) from the spec in `out_dir/results.db` — the seeds make it exact — and
    return its images, each (1, 3, H, W) in [0, 1]: degraded, adversarial, restored (f(y)), restored_adv (f(y')),
    defended_adv (the defended output of y'), gt; plus eps, norm and label."""
    store = open_existing(out_dir)
    try:
        found = store.conn.execute("SELECT spec FROM runs WHERE run_hash = ?", (run_hash,)).fetchone()
    finally:
        store.close()
    if found is None:
        raise SpecError(f"run {run_hash} is not in {out_dir}/results.db; `udcbench leaderboard {out_dir} --format "
                        "csv` lists the runs stored there")
    job = prepare(RunSpec.from_dict(json.loads(found[0])["spec"]))
    for indices, names in batches(job.dataset, job.batch_size):
        if image in names:
            break
    else:
        raise SpecError(f"image {image!r} is not in run {run_hash}'s dataset; its images: "
                        f"{', '.join(job.dataset.names()[:8])}, …")
    samples = [job.dataset[i] for i in indices]
    keep: dict = {}
    score_batch([job], samples, SharedWork(), keep)
    position = names.index(image)
    panel = {key: value[position:position + 1].detach().float().cpu() for key, value in keep.items()}
    eps = job.labels["eps"]
    panel.update(eps=eps, norm=job.attack.norm, label=f"{job.labels['model']} · {job.attack.name} "
                 f"{leaderboard.format_eps(eps, job.attack.norm)} · "
                 f"{leaderboard.defense_label(job.defense.spec, job.defense_params)} · {job.labels['threat']}")
    return panel
