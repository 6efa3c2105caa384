"""`udcbench check`: the CI gate. The leaderboard of a results folder is compared, configuration by
configuration, with a committed baseline leaderboard CSV (as `udcbench leaderboard DIR --format csv` writes it).

A configuration is identified by every identity column the baseline has: the classic ones (model, weights,
defense, threat, attack, objective, eps, steps, seed) in baselines of older versions, and also data, split,
attack settings, mask, EOT draws, batch size, precision, scoring, model options, weights digest and device in
current ones (the run hash only breaks ties between runs no label tells apart). When several runs of the
results match one baseline row — runs an older baseline cannot tell apart — that row fails as ambiguous,
naming what differs, instead of being compared with an average of different experiments.

It fails when a baseline configuration is missing, when a configuration was scored on a different number of
images (its metrics are then not compared: they average other images; `report_lines` states the mismatch once
when every matched row shares it — typically a run with --limit against a full baseline), or when a metric
column (every column of a registered metric, udcbench.metrics.base) moved by more than its tolerance:
absolute, in dB for PSNR columns (--tolerance), in metric units for SSIM and LPIPS columns (--ssim-tolerance),
and for any other metric its registered tolerance unless --metric-tolerance NAME=VALUE sets one (certified PSNR
columns: 0.05 dB, `--metric-tolerance certified-psnr=VALUE` for every radius or certified-psnr@R=VALUE for
one); better / worse follow each metric's registered direction. Configurations that are new are reported and
fail only in strict mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from udcbench.errors import SpecError, UdcbenchError
from udcbench.metrics.base import (CLEAN_LOSS, certified_metric, certified_radius, column_label, column_metric,
                                   digits, higher_is_better, is_metric_column)
from udcbench.report.escape import csv_uncell
from udcbench.report.identity import IDENTITY, KEYS, RUN, SETTINGS, describe
from udcbench.report.leaderboard import summarise

# the metric columns (by prefix) that --tolerance and --ssim-tolerance govern
PSNR_PREFIX, SSIM_PREFIXES = "psnr", ("ssim", "lpips")
IMAGES_HINT = ("{} covered a different part of the data (--limit?); rerun without --limit or regenerate the "
               "baseline (metrics of such rows are not compared)")
SLACK = 1e-9  # float noise: a move of exactly the tolerance passes
CERTIFIED = "certified-psnr"  # --metric-tolerance name of every radius's certified PSNR (certified-psnr@R: one)


class BaselineError(UdcbenchError):
    """The baseline leaderboard CSV is missing or malformed."""


@dataclass(frozen=True)
class Finding:
    """One thing the check reports: a metric that moved, a missing or new configuration, an image count."""

    kind: str  # "moved", "missing", "images", "ambiguous" or "new"
    configuration: str
    metric: str | None = None
    baseline: float | None = None
    now: float | None = None
    tolerance: float | None = None

    def describe(self) -> str:
        if self.kind == "missing":
            return f"missing (in baseline, not in results): {self.configuration} ({self.baseline:.0f} images)"
        if self.kind == "new":
            return f"new (not in baseline): {self.configuration} ({self.now:.0f} images)"
        if self.kind == "ambiguous":
            return (f"ambiguous: {self.configuration} matches {self.now:.0f} runs of the results, which differ in "
                    f"{self.metric}; regenerate the baseline with `udcbench leaderboard DIR --format csv` (one row "
                    "per run, with every setting) or keep those runs in separate folders")
        if self.kind == "images":
            return (f"image count: {self.configuration}: leaderboard has {_images(self.now)} per run, baseline "
                    f"{self.baseline:.0f} — {IMAGES_HINT.format('the run')}")
        places, unit = digits(self.metric), _unit(self.metric)
        label = column_label(self.metric)
        name = f"{self.metric} ({label})" if label != self.metric else self.metric
        if _missing(self.baseline) or _missing(self.now):
            before = "no value" if _missing(self.baseline) else f"{self.baseline:.{places}f}"
            after = "no value" if _missing(self.now) else f"{self.now:.{places}f}"
            return f"{self.configuration}: {name} {before} → {after} (a value appeared or vanished)"
        difference = self.now - self.baseline
        direction = "higher" if difference > 0 else "lower"
        better = higher_is_better(self.metric)
        if better is not None:
            direction += ": better" if (difference > 0) == better else ": worse"
        return (f"{self.configuration}: {name} {self.baseline:.{places}f} → {self.now:.{places}f} "
                f"({difference:+.{places}f}{unit}, {direction}; tolerance ±{self.tolerance:g}{unit})")


@dataclass(frozen=True)
class CheckResult:
    baseline: str
    failures: tuple[Finding, ...]
    new: tuple[Finding, ...]
    rows: int  # baseline configurations whose metrics were compared (found, one run, same image count)
    metrics: int  # metric columns both sides have
    tolerance: float
    ssim_tolerance: float
    strict: bool = False
    others: tuple = ()  # (label, tolerance) of the further metrics compared

    @property
    def passed(self) -> bool:
        return not self.failures and not (self.strict and self.new)

    def report_lines(self) -> list[str]:
        """The failures as `check` prints them, one line each; image-count mismatches that every matched row
        shares (one count now, one in the baseline) are one line instead of one per configuration."""
        counts = [f for f in self.failures if f.kind == "images"]
        pairs = {(f.now, f.baseline) for f in counts}
        if len(counts) < 2 or len(pairs) != 1 or self.rows:
            return [f.describe() for f in self.failures]
        (now, before), = pairs
        line = (f"image count: leaderboard has {_images(now)} per run, baseline {before:.0f} (all "
                f"{len(counts)} rows found in both) — {IMAGES_HINT.format('the runs')}")
        return [line] + [f.describe() for f in self.failures if f.kind != "images"]

    def summary(self) -> str:
        others = "".join(f" / ±{value:g} {label}" for label, value in self.others)
        scope = (f"{self.rows} rows × {self.metrics} metrics within ±{self.tolerance:g} dB PSNR / "
                 f"±{self.ssim_tolerance:g} SSIM{others} of {self.baseline}")
        if self.passed:
            return f"check passed: {scope}" + (f"; {len(self.new)} new rows not in baseline" if self.new else "")
        counts = {kind: sum(f.kind == kind for f in self.failures)
                  for kind in ("moved", "missing", "images", "ambiguous")}
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        parts = [f"{plural(counts['moved'], 'cell')} moved", f"{plural(counts['missing'], 'baseline row')} missing",
                 f"{plural(counts['images'], 'row')} with another image count (not compared)",
                 f"{plural(counts['ambiguous'], 'baseline row')} matching several runs"]
        parts = [part for part, count in zip(parts, counts.values()) if count]
        if self.strict and self.new:
            parts.append(f"{len(self.new)} new rows (--strict)")
        return f"check failed: {', '.join(parts)} — {scope.replace(' within ', ' compared at ')}"


def _images(count: float) -> str:
    return f"{count:.0f} image{'' if count == 1 else 's'}"


def _unit(column: str) -> str:
    found = column_metric(column)
    unit = "dB" if column == CLEAN_LOSS else found[0].unit if found else ""
    return f" {unit}" if unit else ""


def checked(column: str) -> bool:
    """Whether `check` compares a leaderboard column: a metric's column, or the clean PSNR loss."""
    return column == CLEAN_LOSS or is_metric_column(column)


def tolerance_for(column: str, tolerance: float, ssim_tolerance: float, metric_tolerances: dict | None = None):
    """(tolerance, label of a further metric or None) for a checked column: --tolerance for PSNR columns,
    --ssim-tolerance for SSIM and LPIPS ones, else the metric's --metric-tolerance or registered tolerance (a
    metric not installed here: --ssim-tolerance)."""
    found = column_metric(column)
    prefix = PSNR_PREFIX if column == CLEAN_LOSS else found[0].column if found else None
    if prefix == PSNR_PREFIX:
        return tolerance, None
    if prefix in SSIM_PREFIXES or found is None:
        return ssim_tolerance, None
    metric, given = found[0], metric_tolerances or {}
    fallback = given.get(CERTIFIED, metric.tolerance) if certified_radius(column) is not None else metric.tolerance
    return given.get(metric.name, fallback), metric.label


def parse_metric_tolerances(items) -> dict[str, float]:
    """['grad-gap=0.02'] -> {'grad-gap': 0.02}, for metrics other than PSNR, SSIM and LPIPS (which have
    --tolerance and --ssim-tolerance); names are checked against the registered metrics."""
    from udcbench.metrics.base import get_metric

    found = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise SpecError(f"cannot read --metric-tolerance {item!r}; write NAME=VALUE, e.g. grad-gap=0.02")
        if name.strip().startswith(CERTIFIED):
            found[_certified_name(name.strip(), item)] = number
            continue
        metric = get_metric(name.strip())
        if metric.column == PSNR_PREFIX or metric.column in SSIM_PREFIXES:
            raise SpecError(f"{metric.name} columns are governed by --tolerance (PSNR) or --ssim-tolerance (SSIM, "
                            "LPIPS); use those")
        found[metric.name] = number
    return found


def _certified_name(name: str, item: str) -> str:
    """certified-psnr (every radius) or certified-psnr@R, as certified_metric(R) names it."""
    if name == CERTIFIED:
        return name
    try:
        return certified_metric(float(name.removeprefix(CERTIFIED + "@"))).name
    except ValueError:
        raise SpecError(f"cannot read --metric-tolerance {item!r}; name certified PSNR as certified-psnr (every "
                        "radius) or certified-psnr@R (one radius), e.g. certified-psnr@0.25=0.1") from None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _key_text(value) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def configuration(key: dict) -> str:
    """'uformer-nano · none · gray-box · pgd 8/255 · mse-clean · steps 20 · seed 0 · weights bundled', then the
    settings of the key that are not at their defaults ('· data synth:/d · attack settings basis=dct')."""
    attack = key["attack"] if key["eps"] in ("-", "") else f"{key['attack']} {key['eps']}"
    text = (f"{key['model']} · {key['defense']} · {key['threat']} · {attack} · {key['objective']} · "
            f"steps {key['steps']} · seed {key['seed']} · weights {key['weights']}")
    extra = describe(key, [c for c in SETTINGS if c in key])
    return f"{text} · {extra}" if extra else text


# how a run executed, not what it measured: a compiled run is checked against the eager baseline row
EXECUTION = ("backend",)


def key_columns(frame: pd.DataFrame) -> list[str]:
    """The identity columns a baseline has (KEYS in older baselines) but the execution ones; the run hash only
    where labels tie."""
    columns = [c for c in IDENTITY if c in frame.columns and c != RUN and c not in EXECUTION]
    if RUN in frame.columns and frame.duplicated(columns).any():
        columns.append(RUN)
    return columns


def read_baseline(path: str | Path) -> pd.DataFrame:
    """The baseline leaderboard CSV: key columns as text, images and metric columns as numbers."""
    path = Path(path)
    fix = "write one with `udcbench leaderboard DIR --format csv` (DIR/leaderboard.csv) and pass it as --baseline"
    if not path.is_file():
        raise BaselineError(f"baseline {path} does not exist; {fix}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise BaselineError(f"cannot read baseline {path} ({str(error).strip().splitlines()[0]}); {fix}")
    # cells a spreadsheet would run as formulas were written with a leading ' (leaderboard.to_csv): read them back
    frame = frame.rename(columns=csv_uncell).map(csv_uncell)
    lacking = [column for column in KEYS + ["images"] if column not in frame.columns]
    if lacking:
        raise BaselineError(f"baseline {path} lacks the column(s) {', '.join(lacking)}; it must be a leaderboard "
                            f"CSV with {', '.join(KEYS)}, images and metric columns — {fix}")
    for column in ["images"] + [c for c in frame.columns if checked(c)]:
        text = frame[column].str.strip()
        numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = numbers.isna() & ((text != "") | (column == "images"))  # metrics may be empty (no LPIPS run)
        if bad.any():
            index = bad.idxmax()
            raise BaselineError(f"baseline {path}: column {column} holds {text[index]!r} on line {index + 2}, "
                                f"not a number; {fix}")
        frame[column] = numbers.astype(float)
    duplicated = frame.duplicated(key_columns(frame))
    if duplicated.any():
        raise BaselineError(f"baseline {path} lists one configuration twice (line {duplicated.idxmax() + 2}); "
                            f"keep one row per configuration")
    return frame


def compare(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = 0.05,
            ssim_tolerance: float = 0.005, strict: bool = False, baseline_name: str = "baseline",
            metric_tolerances: dict | None = None) -> CheckResult:
    """`current` and `baseline` are leaderboards (summarise's output; the baseline as read_baseline gives it).
    `metric_tolerances`: {metric name: tolerance} for metrics other than PSNR, SSIM and LPIPS."""
    for name, value in (("--tolerance", tolerance), ("--ssim-tolerance", ssim_tolerance),
                        *((f"--metric-tolerance {k}", v) for k, v in (metric_tolerances or {}).items())):
        if not value >= 0:
            raise SpecError(f"{name} must be a non-negative number, got {value}")

    keys = key_columns(baseline)

    def keyed(frame: pd.DataFrame) -> dict:
        groups: dict = {}
        for _, row in frame.iterrows():
            groups.setdefault(tuple(_key_text(row.get(k)) for k in keys), []).append(row)
        return groups

    now, before = keyed(current), {key: rows[0] for key, rows in keyed(baseline).items()}
    metrics = [c for c in baseline.columns if checked(c) and c in current.columns]
    allowed_for = {c: tolerance_for(c, tolerance, ssim_tolerance, metric_tolerances) for c in metrics}
    failures, compared = [], 0
    for key, old in before.items():
        label = configuration(dict(zip(keys, key)))
        if key not in now:
            failures.append(Finding("missing", label, baseline=float(old["images"])))
            continue
        if len(now[key]) > 1:
            differing = [c for c in IDENTITY if c not in keys and c in current
                         and len({_key_text(r[c]) for r in now[key]}) > 1]
            failures.append(Finding("ambiguous", label, ", ".join(differing), now=float(len(now[key]))))
            continue
        new = now[key][0]
        if int(new["images"]) != int(old["images"]):  # other images: its metrics are not comparable
            failures.append(Finding("images", label, baseline=float(old["images"]), now=float(new["images"])))
            continue
        compared += 1
        for metric in metrics:
            was, is_ = float(old[metric]), float(new[metric])
            if math.isnan(was) and math.isnan(is_):
                continue
            allowed = allowed_for[metric][0]
            if math.isnan(was) or math.isnan(is_) or abs(is_ - was) > allowed + SLACK:
                failures.append(Finding("moved", label, metric, was, is_, allowed))
    fresh = tuple(Finding("new", configuration(dict(zip(keys, key))), now=float(row["images"]))
                  for key, rows in now.items() if key not in before for row in rows)
    others = tuple(dict.fromkeys((label, value) for value, label in allowed_for.values() if label is not None))
    return CheckResult(baseline=baseline_name, failures=tuple(failures), new=fresh, rows=compared,
                       metrics=len(metrics), tolerance=tolerance, ssim_tolerance=ssim_tolerance, strict=strict,
                       others=others)


def check(out_dir: str | Path, baseline: str | Path, tolerance: float = 0.05, ssim_tolerance: float = 0.005,
          strict: bool = False, metric_tolerances: dict | None = None) -> CheckResult:
    """Compare the leaderboard recomputed from `out_dir/results.db` with the `baseline` CSV."""
    from udcbench.runner.store import open_existing

    reference = read_baseline(baseline)  # a bad baseline is reported before the store is touched
    store = open_existing(out_dir)
    try:
        rows = store.rows()
    finally:
        store.close()
    return compare(summarise(rows), reference, tolerance, ssim_tolerance, strict, baseline_name=str(baseline),
                   metric_tolerances=metric_tolerances)
