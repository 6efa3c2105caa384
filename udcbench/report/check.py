"""`udcbench check`: the CI gate. The leaderboard of a results folder is compared, configuration by
configuration, with a committed baseline leaderboard CSV (as `udcbench leaderboard DIR --format csv` writes it).

It fails when a baseline configuration is missing, when a configuration was scored on a different number of
images, or when a metric (psnr_*, ssim_*, lpips_*) moved by more than the tolerance: absolute, in dB for PSNR
columns and in metric units for SSIM and LPIPS columns. Configurations that are new are reported and fail only
in strict mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from udcbench.errors import SpecError, UdcbenchError
from udcbench.report.leaderboard import KEYS, METRICS, OPTIONAL, UNDEFENDED, summarise
from udcbench.report.tables import higher_is_better

METRIC_PREFIXES = ("psnr_", "ssim_", "lpips_")
LABELS = dict(METRICS + UNDEFENDED + OPTIONAL)
SLACK = 1e-9  # float noise: a move of exactly the tolerance passes


class BaselineError(UdcbenchError):
    """The baseline leaderboard CSV is missing or malformed."""


@dataclass(frozen=True)
class Finding:
    """One thing the check reports: a metric that moved, a missing or new configuration, an image count."""

    kind: str  # "moved", "missing", "images" or "new"
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
        if self.kind == "images":
            return (f"{self.configuration}: scored on {self.now:.0f} images, the baseline on "
                    f"{self.baseline:.0f}")
        digits = 2 if self.metric.startswith("psnr_") else 4
        unit = " dB" if self.metric.startswith("psnr_") else ""
        name = f"{self.metric} ({LABELS[self.metric]})" if self.metric in LABELS else self.metric
        if _missing(self.baseline) or _missing(self.now):
            before = "no value" if _missing(self.baseline) else f"{self.baseline:.{digits}f}"
            after = "no value" if _missing(self.now) else f"{self.now:.{digits}f}"
            return f"{self.configuration}: {name} {before} → {after} (a value appeared or vanished)"
        difference = self.now - self.baseline
        direction = "higher" if difference > 0 else "lower"
        better = higher_is_better(self.metric)
        if better is not None:
            direction += ": better" if (difference > 0) == better else ": worse"
        return (f"{self.configuration}: {name} {self.baseline:.{digits}f} → {self.now:.{digits}f} "
                f"({difference:+.{digits}f}{unit}, {direction}; tolerance ±{self.tolerance:g}{unit})")


@dataclass(frozen=True)
class CheckResult:
    baseline: str
    failures: tuple[Finding, ...]
    new: tuple[Finding, ...]
    rows: int  # baseline configurations compared
    metrics: int  # metric columns both sides have
    tolerance: float
    ssim_tolerance: float
    strict: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures and not (self.strict and self.new)

    def summary(self) -> str:
        scope = (f"{self.rows} rows × {self.metrics} metrics within ±{self.tolerance:g} dB PSNR / "
                 f"±{self.ssim_tolerance:g} SSIM of {self.baseline}")
        if self.passed:
            return f"check passed: {scope}" + (f"; {len(self.new)} new rows not in baseline" if self.new else "")
        counts = {kind: sum(f.kind == kind for f in self.failures) for kind in ("moved", "missing", "images")}
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        parts = [f"{plural(counts['moved'], 'cell')} moved", f"{plural(counts['missing'], 'baseline row')} missing",
                 f"{plural(counts['images'], 'row')} with another image count"]
        parts = [part for part, count in zip(parts, counts.values()) if count]
        if self.strict and self.new:
            parts.append(f"{len(self.new)} new rows (--strict)")
        return f"check failed: {', '.join(parts)} — {scope.replace(' within ', ' compared at ')}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _key_text(value) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def configuration(key: dict) -> str:
    """'uformer-nano · none · gray-box · pgd 8/255 · mse-clean · steps 20 · seed 0 · weights bundled'."""
    attack = key["attack"] if key["eps"] in ("-", "") else f"{key['attack']} {key['eps']}"
    return (f"{key['model']} · {key['defense']} · {key['threat']} · {attack} · {key['objective']} · "
            f"steps {key['steps']} · seed {key['seed']} · weights {key['weights']}")


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
    lacking = [column for column in KEYS + ["images"] if column not in frame.columns]
    if lacking:
        raise BaselineError(f"baseline {path} lacks the column(s) {', '.join(lacking)}; it must be a leaderboard "
                            f"CSV with {', '.join(KEYS)}, images and metric columns — {fix}")
    for column in ["images"] + [c for c in frame.columns if c.startswith(METRIC_PREFIXES)]:
        text = frame[column].str.strip()
        numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = numbers.isna() & ((text != "") | (column == "images"))  # metrics may be empty (no LPIPS run)
        if bad.any():
            index = bad.idxmax()
            raise BaselineError(f"baseline {path}: column {column} holds {text[index]!r} on line {index + 2}, "
                                f"not a number; {fix}")
        frame[column] = numbers.astype(float)
    duplicated = frame.duplicated(KEYS)
    if duplicated.any():
        raise BaselineError(f"baseline {path} lists one configuration twice (line {duplicated.idxmax() + 2}); "
                            f"keep one row per configuration")
    return frame


def compare(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: float = 0.05,
            ssim_tolerance: float = 0.005, strict: bool = False, baseline_name: str = "baseline") -> CheckResult:
    """`current` and `baseline` are leaderboards (summarise's output; the baseline as read_baseline gives it)."""
    for name, value in (("--tolerance", tolerance), ("--ssim-tolerance", ssim_tolerance)):
        if not value >= 0:
            raise SpecError(f"{name} must be a non-negative number, got {value}")

    def keyed(frame: pd.DataFrame) -> dict:
        return {tuple(_key_text(v) for v in row[KEYS]): row for _, row in frame.iterrows()}

    now, before = keyed(current), keyed(baseline)
    metrics = [c for c in baseline.columns if c.startswith(METRIC_PREFIXES) and c in current.columns]
    failures, compared = [], 0
    for key, old in before.items():
        label = configuration(dict(zip(KEYS, key)))
        if key not in now:
            failures.append(Finding("missing", label, baseline=float(old["images"])))
            continue
        compared += 1
        new = now[key]
        if int(new["images"]) != int(old["images"]):
            failures.append(Finding("images", label, baseline=float(old["images"]), now=float(new["images"])))
        for metric in metrics:
            was, is_ = float(old[metric]), float(new[metric])
            if math.isnan(was) and math.isnan(is_):
                continue
            allowed = tolerance if metric.startswith("psnr_") else ssim_tolerance
            if math.isnan(was) or math.isnan(is_) or abs(is_ - was) > allowed + SLACK:
                failures.append(Finding("moved", label, metric, was, is_, allowed))
    fresh = tuple(Finding("new", configuration(dict(zip(KEYS, key))), now=float(row["images"]))
                  for key, row in now.items() if key not in before)
    return CheckResult(baseline=baseline_name, failures=tuple(failures), new=fresh, rows=compared,
                       metrics=len(metrics), tolerance=tolerance, ssim_tolerance=ssim_tolerance, strict=strict)


def check(out_dir: str | Path, baseline: str | Path, tolerance: float = 0.05, ssim_tolerance: float = 0.005,
          strict: bool = False) -> CheckResult:
    """Compare the leaderboard recomputed from `out_dir/results.db` with the `baseline` CSV."""
    from udcbench.runner.store import open_existing

    reference = read_baseline(baseline)  # a bad baseline is reported before the store is touched
    store = open_existing(out_dir)
    try:
        rows = store.rows()
    finally:
        store.close()
    return compare(summarise(rows), reference, tolerance, ssim_tolerance, strict, baseline_name=str(baseline))
