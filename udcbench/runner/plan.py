"""The planner: many run specs → groups that share a model and a dataset → work units of one image batch.

`make_plan(specs)` prepares every spec (validation first: nothing is written before every run of a suite
resolves), with one model, dataset and defense object per distinct configuration, and groups the runs that can
share work. A *unit* is (group, batch of image indices): every run of the group scored on those images, with
the clean outputs, defended clean outputs and gray-box adversarial examples computed once (see execute.py).
Units are independent, so the local executor runs them in order and the Ray executor runs them as tasks; the
rows of a unit are stored in one transaction.

Batches follow the dataset order in chunks of `batch_size` (split where image sizes differ), so a resumed or
distributed run forms exactly the batches — and draws exactly the numbers — of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from udcbench.errors import SpecError
from udcbench.runner.execute import Job
from udcbench.runner.prepare import prepare


@dataclass
class Group:
    jobs: list[Job]

    @property
    def dataset(self):
        return self.jobs[0].dataset

    @property
    def batch_size(self) -> int:
        return self.jobs[0].batch_size


@dataclass
class Unit:
    """One task: `group` (index into plan.groups), the image indices of one batch and the runs still missing
    them. Ray ships (the specs of `runs`, `indices`) to a worker."""

    group: int
    indices: list[int]
    names: list[str]
    runs: list[str] = field(default_factory=list)


@dataclass
class Plan:
    jobs: list[Job]
    groups: list[Group]

    @property
    def images(self) -> int:
        return sum(len(job.dataset) for job in self.jobs)

    def units(self, done: dict[str, set[str]]) -> list[Unit]:
        """The units with work left, given the images already stored per run hash."""
        units = []
        for number, group in enumerate(self.groups):
            for indices, names in batches(group.dataset, group.batch_size):
                runs = [job.run_hash for job in group.jobs if not set(names) <= done.get(job.run_hash, set())]
                if runs:
                    units.append(Unit(number, indices, names, runs))
        return units


def batches(dataset, batch_size: int) -> list[tuple[list[int], list[str]]]:
    """Consecutive chunks of `batch_size` images in dataset order (images of another size within a chunk are
    scored as their own sub-batch; see run_unit)."""
    names = dataset.names()
    chunks = [list(range(start, min(start + batch_size, len(names)))) for start in range(0, len(names), batch_size)]
    return [(chunk, [names[i] for i in chunk]) for chunk in chunks]


def group_key(job: Job) -> tuple:
    return (id(job.model), id(job.dataset), job.seed, job.batch_size, job.precision, str(job.device))


def make_plan(specs, prepare_cache: dict | None = None) -> Plan:
    """Prepare every spec (duplicates, same run hash, collapse into one) and group the runs sharing work."""
    cache = {} if prepare_cache is None else prepare_cache
    jobs, seen = [], set()
    for spec in specs:
        job = prepare(spec, cache=cache)
        if job.run_hash not in seen:
            seen.add(job.run_hash)
            jobs.append(job)
    grouped: dict[tuple, list[Job]] = {}
    for job in jobs:
        grouped.setdefault(group_key(job), []).append(job)
    for members in grouped.values():
        link_eps_stacks(members)
    return Plan(jobs=jobs, groups=[Group(members) for members in grouped.values()])


def link_eps_stacks(jobs: list[Job]) -> None:
    """--eps-batch: give each run with eps_batch = K > 1 its K partners — the gray-box runs of one group whose
    attack setting differs only in eps — ordered by eps; their adversarial examples are crafted as one batch
    (execute.py). Every partner must be in the plan (the batch shape is part of the run's identity)."""
    from udcbench.runner.suite import eps_stack_key

    stacks: dict = {}
    for job in jobs:
        if job.spec is not None and job.spec.eps_batch > 1 and job.attacks_bare_model:
            key = (eps_stack_key(job.spec), job.spec.eps_batch)
            stacks.setdefault(key, {}).setdefault(job.attack_key, job)
    for (key, count), members in stacks.items():
        partners = sorted(members.values(), key=lambda job: job.attack.params["eps"])
        if key is None or len(partners) != count:
            raise SpecError(f"--eps-batch: {partners[0].attack.name} was planned with {count} eps values per batch "
                            f"but the plan holds {len(partners)} of them; give every eps of the setting in one "
                            "command or suite (exclude rules must not remove some of them), or drop --eps-batch")
        for job in members.values():
            job.eps_partners = partners
