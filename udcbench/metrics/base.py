"""Metrics as a stage: one descriptor per registered metric, read by the runner, the store, leaderboards, pivot
tables, `udcbench check` and the CLI.

A metric is registered once, in the file that defines it, with what everything downstream needs to know:

    @register_metric("grad-gap", higher_is_better=False, label="GradGap", digits=4, tolerance=0.01,
                     description="mean absolute difference of image gradients")
    def grad_gap(a, b):                      # (B, C, H, W) pairs in [0, 1] -> (B,)
        ...

Descriptor fields (keyword arguments of `register_metric`; only `higher_is_better` is required):
  higher_is_better  direction, for 'best' cells, `check` messages and better/worse
  label             name in column headers ('clean PSNR'); default: the name in capitals
  unit              'dB' or '' (shown in captions and `check` messages)
  digits            decimals in leaderboards and tables
  tolerance         default `udcbench check` tolerance, absolute, in the metric's unit
  min_size          smallest image side it can score (refused before a run writes anything)
  needs             what it needs besides torch, one line for `udcbench list metrics` ('' for nothing)
  check             a function () -> None raising a UdcbenchError when what it needs is missing
  column            prefix of its stored columns (default: the name with '-' -> '_'); two metrics may share one
                    (lpips-alex, lpips-vgg), but not in one run
  pairs             which comparisons it scores (PAIRS; default the five restoration pairs)
  default           scored by every run (psnr, ssim)

Stored columns are `<column>_<pair>`: psnr_adv_gt, ssim_clean_gt, lpips_adv_clean, grad_gap_adv_gt, ...
Third-party metrics arrive through the `udcbench.metrics` entry-point group (a module whose import runs its
`register_metric`); `pyiqa:NAME` names any full-reference metric of pyiqa (an optional extra).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from udcbench.errors import SpecError
from udcbench.registry import METRICS, register_metric

# comparison -> (what it describes, the two images it compares); images are named as in runner/execute.py
PAIRS: dict[str, tuple[str, tuple[str, str]]] = {
    "clean_gt": ("clean {label}", ("defended_clean", "gt")),
    "adv_gt": ("attacked {label}", ("defended_adv", "gt")),
    "adv_clean": ("attacked {label} vs clean out", ("defended_adv", "defended_clean")),
    "clean_gt_undefended": ("undefended clean {label}", ("clean", "gt")),
    "adv_gt_undefended": ("undefended attacked {label}", ("adv", "gt")),
    "degraded_gt": ("degraded input {label}", ("degraded", "gt")),
    "input_adv": ("attacked input vs degraded input {label}", ("adversarial", "degraded")),
    # certified bounds of a smoothed defense (`smooth`, --radius): the worst output any ‖δ‖₂ ≤ r can produce
    "cert_gt": ("{label}", ("certified_worst_gt", "gt")),
    "cert_clean": ("{label} vs smoothed clean out", ("certified_worst_clean", "defended_clean")),
}
MAIN_PAIRS = ("clean_gt", "adv_gt", "adv_clean")
UNDEFENDED_PAIRS = ("clean_gt_undefended", "adv_gt_undefended")
RESTORATION_PAIRS = MAIN_PAIRS + UNDEFENDED_PAIRS
# captions of pivot tables, for the three main comparisons
DESCRIPTIONS = {"clean_gt": "Clean {label}{unit}: restored clean input vs ground truth",
                "adv_gt": "Attacked {label}{unit}: restored attacked input vs ground truth",
                "adv_clean": "{label}{unit} of the attacked output vs the clean output"}
FIELDS = ("higher_is_better", "label", "unit", "digits", "tolerance", "min_size", "needs", "check", "column",
          "pairs", "default", "description")
_COLUMN = re.compile(r"^[a-z][a-z0-9_]*$")
_PAIR_SUFFIX = re.compile(r"_(" + "|".join(sorted(PAIRS, key=len, reverse=True)) + r")$")
CLEAN_LOSS = "psnr_clean_loss"  # derived: undefended − defended clean PSNR (lower is better)
CERTIFIED_PAIRS = ("cert_gt", "cert_clean")
_CERTIFIED_PREFIX = re.compile(r"^cpsnr_r(\d+(?:p\d+)?)$")


@dataclass(frozen=True)
class Metric:
    """One registered metric: its function (a, b) -> (B,) and how it is stored, shown and checked."""

    name: str
    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    higher_is_better: bool
    label: str
    unit: str = ""
    digits: int = 4
    tolerance: float = 0.005
    min_size: int = 1
    needs: str = ""
    check: Callable[[], None] | None = None
    column: str = ""
    pairs: tuple[str, ...] = RESTORATION_PAIRS
    default: bool = False
    description: str = ""

    def columns(self) -> list[str]:
        return [f"{self.column}_{pair}" for pair in self.pairs]

    def column_label(self, pair: str) -> str:
        return PAIRS[pair][0].format(label=self.label)

    def ready(self) -> None:
        """Raise the UdcbenchError that says what is missing (weights, a backend) and how to get it."""
        if self.check is not None:
            self.check()

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.function(a, b)


def describe_entry(name: str, function, info: dict) -> Metric:
    """The descriptor of a registry entry (its `register_metric` keyword arguments), validated."""
    unknown = sorted(set(info) - set(FIELDS))
    if unknown or "higher_is_better" not in info:
        problem = f"unknown field(s) {', '.join(unknown)}" if unknown else "no higher_is_better"
        raise SpecError(f"metric {name!r} is registered with {problem}; register_metric takes "
                        f"higher_is_better (required) and {', '.join(FIELDS[1:])}")
    fields = {key: value for key, value in info.items() if key in FIELDS}
    fields.setdefault("label", name.upper())
    fields.setdefault("column", name.replace("-", "_").replace(":", "_").lower())
    fields["pairs"] = tuple(fields.get("pairs", RESTORATION_PAIRS))
    bad = [p for p in fields["pairs"] if p not in PAIRS]
    if bad or not _COLUMN.match(fields["column"]):
        raise SpecError(f"metric {name!r}: " + (f"unknown pair(s) {', '.join(bad)} (pairs: {', '.join(PAIRS)})"
                        if bad else f"column prefix {fields['column']!r} must be lower-case letters, digits and _"))
    return Metric(name=name, function=function, **fields)


def registered() -> list[Metric]:
    """Every registered metric (built-in and entry-point ones), defaults first, then by name."""
    metrics = [describe_entry(e.name, e.factory, e.info) for e in METRICS.entries()]
    return sorted(metrics, key=lambda m: (not m.default, m.name))


def get_metric(name: str, device: str | torch.device = "cpu") -> Metric:
    """The descriptor of a registered metric, or of `pyiqa:NAME` (the optional pyiqa backend)."""
    if name.startswith("pyiqa:"):
        from udcbench.metrics.pyiqa_backend import pyiqa_fields

        return Metric(**pyiqa_fields(name.partition(":")[2], device))
    entry = METRICS.get(name)
    return describe_entry(entry.name, entry.factory, entry.info)


def resolve(names, device: str | torch.device = "cpu") -> tuple[Metric, ...]:
    """The metrics a run scores: the default ones, then `names` in order (duplicates and defaults dropped).
    Each is checked for what it needs; two that write the same columns are refused."""
    chosen = [m for m in registered() if m.default]
    for name in names:
        name = name.strip()
        if not name or any(m.name == name for m in chosen):
            continue
        metric = get_metric(name, device)
        clash = [m.name for m in chosen if m.column == metric.column]
        if clash:
            raise SpecError(f"metrics {clash[0]} and {name} both write the {metric.column}_* columns; score one of "
                            "them per run (two runs, or two --out folders)")
        chosen.append(metric)
    for metric in chosen:
        metric.ready()
    return tuple(chosen)


def check_sizes(metrics, sizes, data: str) -> None:
    """Refuse, before anything is written, a metric that cannot score images of these (H, W) sizes."""
    for metric in metrics:
        small = sorted((h, w) for h, w in sizes if min(h, w) < metric.min_size)
        if small:
            height, width = small[0]
            raise SpecError(f"metric {metric.name} needs images of at least {metric.min_size}×{metric.min_size} px, "
                            f"and {data} has {height}×{width}; use larger images or drop {metric.name} from --metrics")


def certified_prefix(radius: float) -> str:
    """The column prefix of certified PSNR at L2 radius `radius`: 0.25 -> 'cpsnr_r0p25' (columns
    cpsnr_r0p25_cert_gt: vs ground truth, cpsnr_r0p25_cert_clean: vs the smoothed clean output)."""
    return "cpsnr_r" + format(float(radius), "g").replace(".", "p")


def certified_radius(column: str) -> float | None:
    """The radius of a certified-PSNR column (or prefix), None for any other column."""
    found = _PAIR_SUFFIX.search(column)
    prefix = column[:found.start()] if found is not None and found.group(1) in CERTIFIED_PAIRS else column
    match = _CERTIFIED_PREFIX.match(prefix)
    return None if match is None else float(match.group(1).replace("p", "."))


def certified_metric(radius: float) -> Metric:
    """The descriptor of certified PSNR at `radius` (not registered: its columns exist per --radius value)."""
    from udcbench.metrics.fidelity import psnr

    return Metric(name=f"certified-psnr@{radius:g}", function=psnr, higher_is_better=True,
                  label=f"certified PSNR (r={radius:g})", unit="dB", digits=2, tolerance=0.05,
                  column=certified_prefix(radius), pairs=CERTIFIED_PAIRS,
                  description="lower bound on PSNR for every L2 perturbation of norm ≤ r (median smoothing)")


def column_metric(column: str) -> tuple[Metric, str] | None:
    """(metric, pair) of a stored metric column, or None (not a registered metric's column)."""
    found = _PAIR_SUFFIX.search(column)
    if found is None:
        return None
    prefix, pair = column[:found.start()], found.group(1)
    if pair in CERTIFIED_PAIRS:
        radius = certified_radius(column)
        return None if radius is None else (certified_metric(radius), pair)
    for metric in registered():
        if metric.column == prefix and pair in metric.pairs:
            return metric, pair
    return None


def is_metric_column(column: str) -> bool:
    """A column that holds a metric of some registered or unregistered metric (`<prefix>_<pair>`)."""
    return _PAIR_SUFFIX.search(column) is not None and _COLUMN.match(column) is not None


def higher_is_better(column: str) -> bool | None:
    """The direction of a metric column: its metric's; False for the clean PSNR loss; None otherwise."""
    if column == CLEAN_LOSS:
        return False
    found = column_metric(column)
    return None if found is None else found[0].higher_is_better


def digits(column: str, fallback: int = 4) -> int:
    """Decimals shown for a column: its metric's; 2 for the clean PSNR loss; counts 0; else `fallback`."""
    if column == CLEAN_LOSS:
        return 2
    if column in ("queries", "iterations"):
        return 0
    found = column_metric(column)
    return fallback if found is None else found[0].digits


def column_label(column: str) -> str:
    """'attacked PSNR' for psnr_adv_gt; the column itself for columns of no registered metric."""
    if column == CLEAN_LOSS:
        return "clean PSNR loss"
    found = column_metric(column)
    return column if found is None else found[0].column_label(found[1])


def description(column: str) -> str:
    """A pivot-table caption's description of a metric column."""
    if column == CLEAN_LOSS:
        return "Clean PSNR loss (dB) of the defense: undefended minus defended clean PSNR"
    found = column_metric(column)
    if found is None or found[1] not in DESCRIPTIONS:
        return column
    metric, pair = found
    unit = f" ({metric.unit})" if metric.unit else ""
    return DESCRIPTIONS[pair].format(label=metric.label, unit=unit)


def short_names() -> dict[str, str]:
    """Short names for pivot tables: psnr_gt -> psnr_adv_gt, psnr_clean_out -> psnr_adv_clean,
    clean_psnr_gt -> psnr_clean_gt, for every registered metric."""
    names = {}
    for metric in registered():
        prefix = metric.column
        names.update({f"{prefix}_gt": f"{prefix}_adv_gt", f"{prefix}_clean_out": f"{prefix}_adv_clean",
                      f"clean_{prefix}_gt": f"{prefix}_clean_gt"})
    return names


def score(metrics, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every metric on every one of its pairs: {column: (B,)}; `images` holds the tensors PAIRS names."""
    values = {}
    for metric in metrics:
        for pair in metric.pairs:
            first, second = PAIRS[pair][1]
            values[f"{metric.column}_{pair}"] = metric(images[first], images[second])
    return values


__all__ = ["CERTIFIED_PAIRS", "Metric", "PAIRS", "certified_metric", "certified_prefix", "certified_radius",
           "check_sizes", "column_label", "column_metric", "description", "digits", "get_metric",
           "higher_is_better", "is_metric_column", "register_metric", "registered", "resolve", "score",
           "short_names"]
