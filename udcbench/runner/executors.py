"""Executors: run a plan's units and write their rows through one writer (the store) as they finish.

`local` (the default) runs the units in order in this process and never imports Ray; `ray` ships each unit —
the specs of its runs and its image indices — to a Ray task, and the driver stores the rows each task returns.
Both score a unit with the same function (`run_unit`), so they produce the same rows.

Another process may be running on the same store (two `udcbench run` on one --out): a unit is computed only
once its pairs are claimed (claims.py) — the local executor claims each unit just before computing it, Ray all
of its units up front — and units held by the other process are waited for, or taken over when it dies.
"""

from __future__ import annotations

import time
from typing import Callable

from udcbench.errors import SpecError
from udcbench.runner.claims import POLL_S, Claims
from udcbench.runner.execute import SharedWork, run_unit
from udcbench.runner.plan import Plan, Unit

EXECUTORS = ("local", "ray")


def check_executor(executor: str) -> None:
    """The executor exists and what it needs is installed (Ray for `ray`), before anything is written."""
    if executor not in EXECUTORS:
        raise SpecError(f"unknown executor {executor!r}; use local or ray")
    if executor == "ray":
        import importlib.util

        from udcbench.runner.ray_executor import ray_missing

        if importlib.util.find_spec("ray") is None:
            raise ray_missing()


class Execution:
    """The running tally of one `execute_plan`: rows stored (by anyone), added and computed here, shared work."""

    def __init__(self, plan: Plan, store, progress, executor: str, address, gpus_per_task):
        self.plan, self.store, self.progress = plan, store, progress
        self.executor, self.address, self.gpus_per_task = executor, address, gpus_per_task
        self.names = {job.run_hash: set(job.dataset.names()) for job in plan.jobs}
        self.total = sum(len(n) for n in self.names.values())
        self.stored = self.skipped = self.count_stored()
        self.added = self.computed = 0
        self.work = SharedWork()
        self.claims = Claims(store)

    def count_stored(self) -> int:
        return sum(len(self.store.done(run) & names) for run, names in self.names.items())

    def show(self, note: str) -> None:
        if self.progress:
            self.progress(self.stored, self.total, note)

    def finished(self, unit: Unit, rows: list[dict], work: SharedWork) -> None:
        runs = set(unit.runs)
        added = self.store.add_many([row for row in rows if row["run_hash"] in runs], claims=self.claims)
        self.stored += added
        self.added += added
        self.work.merge(work)
        self.show(self.describe(unit))

    def describe(self, unit: Unit) -> str:
        """The progress note of a finished unit: its images; in a plan of several runs, also its group's runs
        ('img_03 · group 2/3: 4 runs of uformer-nano')."""
        names = ", ".join(unit.names)
        if len(self.plan.jobs) == 1:
            return names
        group = f"group {unit.group + 1}/{len(self.plan.groups)}: " if len(self.plan.groups) > 1 else ""
        runs = len(unit.runs)
        model = self.plan.groups[unit.group].jobs[0].labels.get("model", "")
        return f"{names} · {group}{runs} run{'' if runs == 1 else 's'} of {model}"

    def compute(self, units: list[Unit]) -> None:
        if self.executor == "local":
            for unit in units:
                jobs = [job for job in self.plan.groups[unit.group].jobs if job.run_hash in unit.runs]
                self.finished(unit, *run_unit(jobs, unit.indices))
        elif units:
            from udcbench.runner.ray_executor import run_with_ray

            run_with_ray(self.plan, units, self.finished, address=self.address, gpus_per_task=self.gpus_per_task)

    def run(self, units: list[Unit]) -> None:
        """Claim and compute every unit; then, while another process holds some, wait for its rows (or for its
        claims to go stale, and take them over) until every pair of the plan is stored. Claims are released
        however this ends."""
        pending, waited = units, False
        try:
            while pending:
                mine, waiting, holder = [], [], ""
                for unit in pending:
                    split = self.claims.claim(unit)
                    if split.ours:
                        self.computed += split.claimed
                        mine.append(split.ours)
                        if self.executor == "local":  # one at a time: the other process claims the next one
                            self.compute(mine)
                            mine = []
                    if split.theirs:
                        waiting.append(split.theirs)
                        holder = split.holder
                self.compute(mine)
                if waiting:
                    self.stored, waited = self.count_stored(), True
                    self.show(f"waiting for another udcbench ({holder})")
                    time.sleep(POLL_S)
                pending = waiting
        finally:
            self.claims.release()
        if waited:
            self.stored = self.count_stored()
            self.show("")


def execute_plan(plan: Plan, store, progress: Callable[[int, int, str], None] | None = None,
                 executor: str = "local", address: str | None = None, gpus_per_task: float | None = None) -> dict:
    """Score every (run, image) of the plan not yet in `store`; returns counts — `computed` here, `skipped`
    (stored before), `others` (stored meanwhile by another process) — and the shared-work tally."""
    if executor not in EXECUTORS:
        raise SpecError(f"unknown executor {executor!r}; use local or ray")
    state = Execution(plan, store, progress, executor, address, gpus_per_task)
    done = {run: store.done(run) & names for run, names in state.names.items()}
    units = plan.units(done)
    state.show("")
    state.run(units)
    return {"runs": len(plan.jobs), "images": state.total, "computed": state.computed, "skipped": state.skipped,
            "others": state.count_stored() - state.skipped - state.added, "units": len(units),
            "work": state.work.as_dict()}
