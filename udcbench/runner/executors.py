"""Executors: run a plan's units and write their rows through one writer (the store) as they finish.

`local` (the default) runs the units in order in this process and never imports Ray; `ray` ships each unit —
the specs of its runs and its image indices — to a Ray task, and the driver stores the rows each task returns.
Both score a unit with the same function (`run_unit`), so they produce the same rows.
"""

from __future__ import annotations

from typing import Callable

from udcbench.errors import SpecError
from udcbench.runner.execute import SharedWork, run_unit
from udcbench.runner.plan import Plan, Unit

EXECUTORS = ("local", "ray")


def execute_plan(plan: Plan, store, progress: Callable[[int, int, str], None] | None = None,
                 executor: str = "local", address: str | None = None, gpus_per_task: float | None = None) -> dict:
    """Score every (run, image) of the plan not yet in `store`; returns counts and the shared-work tally."""
    if executor not in EXECUTORS:
        raise SpecError(f"unknown executor {executor!r}; use local or ray")
    names = {job.run_hash: set(job.dataset.names()) for job in plan.jobs}
    done = {job.run_hash: store.done(job.run_hash) & names[job.run_hash] for job in plan.jobs}
    total = sum(len(n) for n in names.values())
    state = {"stored": sum(len(d) for d in done.values()), "work": SharedWork()}
    skipped = state["stored"]
    units = plan.units(done)
    if progress:
        progress(state["stored"], total, "")

    def finished(unit: Unit, rows: list[dict], work: SharedWork) -> None:
        runs = set(unit.runs)
        state["stored"] += store.add_many([row for row in rows if row["run_hash"] in runs])
        state["work"].merge(work)
        if progress:
            progress(state["stored"], total, ", ".join(unit.names))

    if executor == "local":
        for unit in units:
            jobs = [job for job in plan.groups[unit.group].jobs if job.run_hash in unit.runs]
            finished(unit, *run_unit(jobs, unit.indices))
    else:
        from udcbench.runner.ray_executor import run_with_ray

        run_with_ray(plan, units, finished, address=address, gpus_per_task=gpus_per_task)
    return {"runs": len(plan.jobs), "images": total, "computed": state["stored"] - skipped, "skipped": skipped,
            "units": len(units), "work": state["work"].as_dict()}

