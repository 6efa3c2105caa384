"""The Ray executor: each unit of the plan (one group's runs on one image batch) is a Ray task.

A task receives the run specs of its unit — with the device the driver resolved, so every worker computes the
run hashes the driver expects — and the image indices; it prepares the runs (once per worker process: models,
datasets and defenses are cached there) and returns the rows, which the driver writes into the store as tasks
finish. Tasks declare one CPU, and one GPU (or `gpus_per_task`) when the runs are on CUDA, so Ray places them
on machines that have what they need. Start a cluster with `ray start --head` and pass `--address auto` (or
host:port); without an address Ray starts a local cluster for this command.
"""

from __future__ import annotations

import dataclasses

from udcbench.errors import MissingExtraError
from udcbench.runner.execute import run_unit
from udcbench.runner.plan import Plan, make_plan

_WORKER_CACHE: dict = {}  # per worker process: prepared models, datasets and defenses, reused across tasks


def score_unit(specs: list, indices: list[int], threads: int) -> tuple[list[dict], object]:
    """Runs inside a Ray worker: prepare `specs` (one group) and score them on `indices` with the driver's
    number of torch threads (a CPU's float sums depend on how the work is split, so this keeps the rows
    bit-identical to the local executor's on the same kind of machine)."""
    import torch

    torch.set_num_threads(threads)
    plan = make_plan(specs, prepare_cache=_WORKER_CACHE)
    if len(plan.groups) != 1:
        raise RuntimeError("internal error: a Ray task received runs of several groups")
    return run_unit(plan.groups[0].jobs, indices)


def ray_missing() -> MissingExtraError:
    return MissingExtraError("--executor ray needs Ray, which is not installed; "
                             "pip install -c constraints.txt 'udcbench[ray]' (or use --executor local)")


def run_with_ray(plan: Plan, units, finished, address: str | None = None, gpus_per_task: float | None = None,
                 num_cpus: int | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise ray_missing() from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        import torch

        threads = torch.get_num_threads()
        remote = ray.remote(score_unit)
        pending = {}
        for unit in units:
            jobs = [job for job in plan.groups[unit.group].jobs if job.run_hash in unit.runs]
            jobs += [p for job in jobs for p in job.eps_partners if p not in jobs]  # a stack is crafted whole
            jobs = list({job.run_hash: job for job in jobs}.values())
            specs = [dataclasses.replace(job.spec, device=str(job.device)) for job in jobs]
            gpus = (1 if gpus_per_task is None else gpus_per_task) if jobs[0].device.type == "cuda" else 0
            pending[remote.options(num_cpus=1, num_gpus=gpus).remote(specs, unit.indices, threads)] = unit
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            rows, work = ray.get(ready[0])
            finished(unit, rows, work)
    finally:
        if started_here:
            ray.shutdown()
