"""Certified PSNR in reports: which certified columns rows have, the smoothing they were certified with, and the
sentences that say what the numbers mean.

A run with the `smooth` defense and `--radius 0.1,0.25` stores, per image and radius r, `cpsnr_r0p1_cert_gt` (a
lower bound on the PSNR vs ground truth of the median-smoothed output for every ‖δ‖₂ ≤ r of the clean input) and
`cpsnr_r0p1_cert_clean` (the same bound against the smoothed clean output). The bound holds with confidence
1 − α jointly over all pixels, from n noise samples; n and α are read from the smooth component's record in
the rows' `defense_params`. Leaderboards and pivot tables put each certified column next to its empirical
counterpart (COMPANIONS): attacked PSNR is what one attack reached, certified PSNR what no attack can go below.
"""

from __future__ import annotations

import json

import pandas as pd

from udcbench.errors import SpecError
from udcbench.metrics.base import CERTIFIED_PAIRS, certified_prefix, certified_radius

# empirical column -> the certified pair measured against the same reference
COMPANIONS = {"psnr_adv_gt": "cert_gt", "psnr_adv_clean": "cert_clean"}
BOUND = "bound"  # pivot dimension of tables that show attacked and certified PSNR side by side
ATTACKED = "attacked"  # its value for the empirical column; 'cert@R' for the certified ones
REFERENCES = {"cert_gt": "ground truth", "cert_clean": "the smoothed clean output"}
SHORT = {"cert_gt": "cert", "cert_clean": "cert_clean"}  # cert@0.25, cert_clean@0.25


def columns(frame: pd.DataFrame, pair: str | None = None) -> list[str]:
    """The certified columns of `frame` that hold some value, by pair (cert_gt first) and radius; one pair only
    when `pair` is given."""
    found = [c for c in frame.columns if certified_radius(c) is not None and frame[c].notna().any()
             and (pair is None or c.endswith("_" + pair))]
    return sorted(found, key=lambda c: (not c.endswith("_cert_gt"), certified_radius(c)))


def companions(column: str, frame: pd.DataFrame) -> list[str]:
    """The certified columns shown beside an empirical column (psnr_adv_gt -> cpsnr_r*_cert_gt), by radius."""
    return columns(frame, COMPANIONS[column]) if column in COMPANIONS else []


def with_companions(labelled: list[tuple[str, str]], frame: pd.DataFrame, label) -> list[tuple[str, str]]:
    """(column, label) pairs with each empirical column followed by its certified companions in `frame`."""
    out = []
    for column, text in labelled:
        out.append((column, text))
        out += [(companion, label(companion)) for companion in companions(column, frame)]
    return out


def short_names(rows: pd.DataFrame | None) -> dict[str, str]:
    """Pivot-table names of the certified columns in `rows`: cert@0.25 / cert_clean@0.25, and in the scheme of
    the registered metrics cpsnr_r0p25_gt / cpsnr_r0p25_clean_out."""
    names = {}
    for column in [] if rows is None else columns(rows):
        pair = next(p for p in CERTIFIED_PAIRS if column.endswith("_" + p))
        prefix, radius = column[:-len(pair) - 1], certified_radius(column)
        names[f"{SHORT[pair]}@{radius:g}"] = column
        names[f"{prefix}_{'gt' if pair == 'cert_gt' else 'clean_out'}"] = column
    return names


def parse_short(name: str) -> str | None:
    """cert@0.25 -> cpsnr_r0p25_cert_gt, cert_clean@.25 -> cpsnr_r0p25_cert_clean (whether or not rows have
    it); None for any other name."""
    short, at, radius = name.partition("@")
    pair = next((p for p, s in SHORT.items() if s == short), None)
    try:
        value = float(radius) if at and pair else None
    except ValueError:
        return None
    return None if value is None or not value >= 0 else f"{certified_prefix(value)}_{pair}"


def require(column: str, rows: pd.DataFrame | None) -> None:
    """Refuse a certified column that no row of `rows` has, naming the radii they do have."""
    radius = certified_radius(column)
    if radius is None or rows is None or column in columns(rows):
        return
    have = ", ".join(f"{certified_radius(c):g}" for c in columns(rows, "cert_gt")) or "none"
    raise SpecError(f"no stored row has certified PSNR at r = {radius:g} ({column}; radii here: {have}); run with "
                    f"--defense smooth:… --radius {radius:g} to certify it, or pick a stored radius")


def _records(params) -> list[dict]:
    try:
        records = json.loads(params) if isinstance(params, str) else []
    except ValueError:
        return []
    return [r for r in records if isinstance(r, dict) and r.get("component") == "smooth"] \
        if isinstance(records, list) else []


def _number(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def smoothing(frame: pd.DataFrame) -> list[tuple[str, int | None, float | None]]:
    """(defense label, n, α) of the smooth components of the rows that have a certified value, each once, in
    order of first appearance; n or α None where a record lacks it. `frame`: labelled rows (label_rows)."""
    certified = columns(frame)
    if not certified or "defense_params" not in frame:
        return []
    rows = frame[frame[certified].notna().any(axis=1)]
    found = []
    for defense, params in zip(rows["defense"], rows["defense_params"]):
        for record in _records(params) or [{}]:
            found.append((str(defense), _number(record.get("n")), _number(record.get("alpha"))))
    return list(dict.fromkeys(found))


def _setting(n, alpha, short: bool = False) -> str:
    count = "n unrecorded" if n is None else f"n = {n:g}" + ("" if short else " noise samples")
    confidence = "1 − α" if short else "confidence 1 − α"
    return count + (", α unrecorded" if alpha is None else f", {confidence} = {round(1 - alpha, 12):g}")


def smoothing_text(settings, short: bool = False) -> str:
    """'n = 100 noise samples, confidence 1 − α = 0.999' ('n = 100, 1 − α = 0.999' when `short`), or 'differs
    between rows: ' and each setting with its defenses; written to follow the word 'smoothing'."""
    distinct = list(dict.fromkeys((n, alpha) for _, n, alpha in settings))
    if not distinct:
        return "n and α unrecorded"
    if len(distinct) == 1:
        return _setting(*distinct[0], short=short)
    return "differs between rows: " + "; ".join(
        f"{_setting(n, alpha)} ({', '.join(dict.fromkeys(d for d, m, a in settings if (m, a) == (n, alpha)))})"
        for n, alpha in distinct)


def meaning(reference: str = "ground truth") -> str:
    return (f"a lower bound on the PSNR vs {reference} of the median-smoothed output for every L2 perturbation "
            "‖δ‖₂ ≤ r of the clean input, holding with confidence 1 − α jointly over all pixels")


def leaderboard_note(settings) -> str:
    """The leaderboard's sentence on certified columns."""
    return (f" Certified PSNR (r) is {meaning()} ('vs smoothed clean out': against the smoothed clean output; "
            f"'-': no certificate); smoothing {smoothing_text(settings)}.")


def describe(column: str, frame: pd.DataFrame) -> str | None:
    """A pivot-table caption's description of a certified column (None for any other column)."""
    radius = certified_radius(column)
    if radius is None:
        return None
    pair = "cert_clean" if column.endswith("_cert_clean") else "cert_gt"
    text = meaning(REFERENCES[pair]).replace("≤ r", f"≤ {radius:g}")
    return f"Certified PSNR (dB) at L2 radius r = {radius:g}: {text} (smoothing {smoothing_text(smoothing(frame))})"


def beside(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """`frame` (dimension_frame's rows) with a `bound` dimension: 'attacked' on the rows as they are, and for
    each certified companion of `column` one more copy of the rows that have it, labelled 'cert@R', with the
    certified value in `column`. Unchanged (bound '-') when `column` has no companion with a value."""
    found = companions(column, frame)
    if not found:
        return frame
    parts = [frame.assign(**{BOUND: ATTACKED})]
    for companion in found:
        certified = frame[frame[companion].notna()]
        parts.append(certified.assign(**{BOUND: f"cert@{certified_radius(companion):g}",
                                         column: certified[companion]}))
    return pd.concat(parts, ignore_index=True)


def settle(frame: pd.DataFrame) -> pd.DataFrame:
    """After the --where filters: bound '-' again when no selected row has a certificate (the plain table)."""
    if set(frame[BOUND]) == {ATTACKED}:
        frame = frame.assign(**{BOUND: "-"})
    return frame


def placed(frame: pd.DataFrame, dimensions: tuple[str, ...]) -> tuple[str, ...]:
    """('bound',) to append to the columns when the table has certified values and --rows/--cols lack it:
    attacked | cert@0.1 | cert@0.25 under each attack and eps."""
    return (BOUND,) if frame[BOUND].nunique() > 1 and BOUND not in dimensions else ()


def beside_note(frame: pd.DataFrame, column: str) -> str | None:
    """The caption part for a table with a bound dimension (None without one)."""
    if BOUND not in frame or not frame[BOUND].str.startswith("cert@").any():
        return None
    reference = REFERENCES[COMPANIONS[column]]
    certified = frame[frame[BOUND].str.startswith("cert@")]
    return (f"cert@r: certified PSNR at L2 radius r, {meaning(reference)}, next to what the attack reached "
            f"(attacked); smoothing {smoothing_text(smoothing(certified))}")
