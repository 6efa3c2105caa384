"""The standard evaluation (`udcbench evaluate`): one fixed, versioned protocol, run through the same planner,
executor and results store as any suite, and summarised as one leaderboard entry (report/evaluation.py).

`udc-standard-v1` (STANDARD_V1), frozen — any change to it is a new protocol name:
  - white-box L∞ PGD at ε ∈ {1, 2, 4, 8}/255, 20 steps, α = ε/4, random start, 1 restart (the study's grid);
  - C&W-L2 in its fixed trade-off form, c = 0.03, 1,000 Adam steps at lr 0.01: its attacked PSNR is what that
    exchange rate buys, so it compares across models at one c (the minimum-norm form's PSNR only restates its
    target). c is per squared pixel difference, independent of the image size; at 0.03 the bundled uformer-nano's
    C&W perturbation has an RMS of 8.2/255 per value (‖δ‖₂ 7.1 on a 128² image), the size of a full-budget
    PGD 8/255 one, and its output falls to 12.2 dB; at 0.01 the input comes back unchanged (below the model's
    1/σ² threshold), at 0.1 the output is destroyed (7.4 dB, RMS 24/255) — there every model would sit at the
    floor;
  - black-box SimBA, pixel basis, random order, 4/255 per coordinate, 1,000 iterations (the study's setting);
  - seed 0, objective mse-clean, fp32, outputs scored in float;
  - no defense: gray-box (= white-box on the model); a defense (`--defense`, part of the evaluated system): every
    attack runs through it (threat `adaptive`: BPDA where a transform has no gradient, EOT over 2 draws per
    objective evaluation for white-box attacks against a randomised defense, black-box attacks query it);
  - robust PSNR / SSIM: the threat model is L∞ ‖δ‖∞ ≤ 8/255; per image the minimum over the clean input (δ = 0 is
    inside the ball) and every protocol attack whose perturbations stay inside it (the four PGD runs and SimBA),
    each metric minimised on its own, then the mean over images. C&W has no L∞ budget, so it is reported beside
    the robust numbers, not inside them.

The protocol's runs are ordinary runs: their hashes equal those of the same settings in a suite (a PGD run here is
the same run as in benchmarks/paper.yaml), a killed evaluation resumes from `--out/results.db`, and the entry is
recomputed from the stored rows. Only the device and the batch size may vary (both are recorded; a batch draws
its random starts once, so a different batch size gives different, equally valid numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from udcbench.errors import SpecError
from udcbench.runner.plan import Plan, make_plan
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec, stable_hash


@dataclass(frozen=True)
class ProtocolAttack:
    """One attack setting of a protocol: `key` names it in the entry, `params` pins every parameter (fractions
    as text, read exactly), `robust` puts it inside the worst case of the robust numbers."""

    key: str
    name: str
    params: tuple[tuple[str, object], ...]
    robust: bool


@dataclass(frozen=True)
class Protocol:
    """A frozen evaluation protocol; `definition()` is what its digest covers."""

    name: str
    attacks: tuple[ProtocolAttack, ...]
    budget: str  # the L∞ ball of the robust numbers, as a fraction (8/255)
    seed: int = 0
    objective: str = "mse-clean"
    eot: int = 2  # draws per objective evaluation: white-box attacks through a randomised defense

    def definition(self) -> dict:
        return {
            "name": self.name,
            "attacks": [{"key": a.key, "attack": a.name, "params": dict(a.params), "robust": a.robust}
                        for a in self.attacks],
            "seed": self.seed, "objective": self.objective, "precision": "fp32", "scoring": "float",
            "threat": {"no defense": "gray-box", "defense": "adaptive"},
            "eot": {"white-box attack, randomised defense": self.eot, "otherwise": 1},
            "robust": {"budget": f"linf {self.budget}", "metrics": ["psnr", "ssim"], "against": "gt",
                       "rule": "per image, each metric's minimum over the clean input and every robust attack; "
                               "then the mean over images"},
        }

    @property
    def digest(self) -> str:
        return stable_hash(self.definition())

    @property
    def budget_value(self) -> float:
        return float(Fraction(self.budget))


def _pgd(eps: int) -> ProtocolAttack:
    alpha = Fraction(eps, 255) / 4
    return ProtocolAttack(f"pgd-{eps}/255", "pgd", (("eps", f"{eps}/255"), ("alpha", f"{alpha.numerator}/"
                          f"{alpha.denominator}"), ("steps", 20), ("random_start", True), ("restarts", 1)), True)


STANDARD_V1 = Protocol(
    name="udc-standard-v1",
    attacks=(*(_pgd(eps) for eps in (1, 2, 4, 8)),
             ProtocolAttack("cw", "cw", (("const", 0.03), ("steps", 1000), ("lr", 0.01)), False),
             ProtocolAttack("simba", "simba", (("eps", "4/255"), ("iterations", 1000), ("basis", "pixel"),
                                               ("order", "random")), True)),
    budget="8/255",
)
PROTOCOLS = {STANDARD_V1.name: STANDARD_V1}
CURRENT = STANDARD_V1  # what `udcbench evaluate` runs (tests swap in a smaller protocol here)


def check_protocol(protocol: Protocol) -> None:
    """A robust attack must stay inside the protocol's L∞ ball, and keys must be unique."""
    from udcbench.attacks import make_attack

    keys = [attack.key for attack in protocol.attacks]
    if len(set(keys)) != len(keys):
        raise SpecError(f"protocol {protocol.name}: attack keys repeat ({', '.join(keys)})")
    for attack in protocol.attacks:
        if not attack.robust:
            continue
        built = make_attack(attack.name, **dict(attack.params))
        if built.norm != "linf" or built.params.get("eps", float("inf")) > protocol.budget_value * (1 + 1e-12):
            raise SpecError(f"protocol {protocol.name}: {attack.key} is not an L∞ attack within {protocol.budget}; "
                            "it cannot be part of the robust worst case")


@dataclass
class Evaluation:
    """A planned evaluation: the plan, and for each protocol attack the run that carries it."""

    protocol: Protocol
    plan: Plan
    runs: dict = field(default_factory=dict)  # attack key -> Job
    limit: int | None = None
    requested_model: str = ""

    @property
    def first(self):
        return next(iter(self.runs.values()))


def evaluation_specs(protocol: Protocol, model: str, weights: str | None, data: str, split: str, defense: str,
                     device: str, batch_size: int, limit: int | None) -> dict[str, RunSpec]:
    """The protocol's runs for one system, keyed by attack key."""
    defense = (defense or "none").strip() or "none"
    threat = "gray-box" if defense == "none" else "adaptive"
    return {attack.key: RunSpec(model=ModelSpec(model, weights), data=DataSpec(data, split, limit),
                                attack=AttackSpec.of(attack.name, objective=protocol.objective, **dict(attack.params)),
                                defense=DefenseSpec(defense), seed=protocol.seed, device=device, threat=threat,
                                batch_size=batch_size)
            for attack in protocol.attacks}


def plan_evaluation(model: str, weights: str | None = None, data: str = "udc-mini", split: str = "test",
                    defense: str = "none", device: str = "cpu", batch_size: int = 1, limit: int | None = None,
                    protocol: Protocol | None = None) -> Evaluation:
    """Validate and prepare every run of the protocol for this system (model, weights, data, defense) without
    writing anything: an unknown model, unreadable weights, missing data or an unavailable device is a
    UdcbenchError here."""
    protocol = protocol or CURRENT
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SpecError(f"--limit must be at least 1, got {limit}; e.g. --limit 1 for a smoke test, or leave it out "
                        "for a complete entry")
    check_protocol(protocol)
    specs = evaluation_specs(protocol, model, weights, data, split, defense, device, batch_size, limit)
    plan = make_plan(list(specs.values()))
    runs = {}
    for key, spec in specs.items():
        job = next((job for job in plan.jobs if job.spec == spec), None)
        if job is None:  # the planner folded it into an earlier run of the same hash
            raise SpecError(f"protocol {protocol.name}: {key} resolves to the same run as another of its attacks; "
                            "fix the protocol")
        runs[key] = job
    _check_eot(protocol, runs)
    return Evaluation(protocol=protocol, plan=plan, runs=runs, limit=limit, requested_model=model)


def _check_eot(protocol: Protocol, runs: dict) -> None:
    """The runner's EOT default is the protocol's: refuse to run if they ever drift apart."""
    from udcbench.attacks.base import AttackKind

    for key, job in runs.items():
        if job.labels["threat"] != "adaptive":
            continue
        randomised = AttackKind(job.attack.kind).white_box and job.defense.randomized
        expected = protocol.eot if randomised else 1
        if job.labels.get("eot") != expected:
            raise SpecError(f"protocol {protocol.name}: {key} would run with EOT {job.labels.get('eot')}, the "
                            f"protocol fixes {expected}; this udcbench cannot run the protocol as defined")


def run_evaluation(evaluation: Evaluation, out: str | Path, progress=None, generated_at: str | None = None) -> dict:
    """Run (or resume) every run of the evaluation into `out/results.db`, compute the entry from the stored rows
    and write `out/evaluation.json` and `out/evaluation.md`. Returns the entry."""
    from udcbench.report import evaluation as report
    from udcbench.runner.run import run_plan

    rows = run_plan(evaluation.plan, out, progress)
    entry = report.entry(rows, evaluation, generated_at=generated_at)
    entry["run"].update(rows_computed_now=rows.attrs.get("computed", 0), rows_resumed=rows.attrs.get("skipped", 0))
    report.write(entry, Path(out))
    return entry
