"""What makes a leaderboard row exactly one experiment, and how its settings are labelled.

A leaderboard row is one run hash: every setting that changes a number (model and weights digest, its
options, the attack and every parameter the user set, objective, mask, the defense, threat, EOT draws, data
and split, seed, batch size, precision, how outputs are scored, device type) is part of the hash, so two runs
that differ anywhere never share a row. Each row is labelled by the classic columns (KEYS) plus the SETTINGS;
renderers show the settings that differ between rows and state the shared ones once.

Labels are plain strings: eps as '8/255' / 'L2 1' / '-', weights as 'bundled' / 'RANDOM (untrained)' / a file
name, the attack settings the user set as 'alpha=1/255, restarts=3', '-' for none. Rows written by earlier
versions lack some settings: they are filled from the run's stored spec where it has them, else '-'.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from udcbench.attacks.base import format_eps  # noqa: F401  (re-exported)
from udcbench.defenses.base import defense_label  # noqa: F401  (re-exported)

# the classic columns, in the order leaderboards have always shown them
KEYS = ["model", "weights", "defense", "threat", "attack", "objective", "eps", "steps", "seed"]
# every other setting that separates runs; label column -> the stored column it is read from
SETTINGS = ["data", "split", "settings", "mask", "eot", "batch_size", "eps_batch", "precision", "backend",
            "scoring", "model_options", "weights_digest", "device"]
SOURCE = {"settings": "attack_settings"}
RUN = "run_hash"
IDENTITY = KEYS + SETTINGS + [RUN]
# the label a setting has when it was left at its default (renderers keep such settings out of captions)
DEFAULT_LABELS = {"data": "udc-mini", "split": "test", "settings": "-", "mask": "-", "eot": "-", "batch_size": "1",
                  "eps_batch": "1", "precision": "fp32", "backend": "eager", "scoring": "float", "model_options": "-",
                  "device": "cpu"}
STATED = ("data", "scoring")  # conventions a table always states, even at their defaults
SETTING_NAMES = {"settings": "attack settings", "batch_size": "batch size", "eps_batch": "ε values per batch",
                 "model_options": "model options", "weights_digest": "weights digest", "eot": "EOT draws"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def weights_label(label) -> str:
    if _missing(label):
        return "-"
    if label == "random":
        return "RANDOM (untrained)"
    if label.startswith("bundled:"):
        return "bundled"
    if label.startswith("none"):
        return "none"
    return Path(label).name


def _text(value) -> str:
    if _missing(value) or value == "":
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _label_settings(frame: pd.DataFrame) -> None:
    frame["settings"] = frame["attack_settings"].map(_text)
    frame["mask"] = frame["mask"].map(lambda m: "-" if _missing(m) else m if str(m).startswith("box:")
                                      else Path(str(m)).name)
    frame["batch_size"] = frame["batch_size"].map(lambda b: "1" if _missing(b) else _text(b))
    frame["eps_batch"] = frame["eps_batch"].map(lambda b: "1" if _missing(b) else _text(b))
    frame["precision"] = frame["precision"].map(lambda p: "fp32" if _missing(p) else p)
    frame["backend"] = frame["backend"].map(lambda b: "eager" if _missing(b) else b)
    frame["scoring"] = frame["scoring"].map(lambda s: "float" if _missing(s) else s)
    frame["device"] = frame["device"].map(lambda d: "-" if _missing(d) else str(d).split(":")[0])
    for column in ("data", "split", "eot", "model_options", "weights_digest"):
        frame[column] = frame[column].map(_text)


RAW = KEYS + ["norm", "defense_params", "alpha"] + [SOURCE.get(column, column) for column in SETTINGS]


def runs(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per run hash with every stored setting (the first value a row of the run has: rows that older
    versions wrote, then resumed by this one, count as one run) — raw values, not yet labels."""
    frame = rows.copy()
    for column in RAW:
        if column not in frame:
            frame[column] = None
    return frame.groupby(RUN, sort=False)[RAW].first().reset_index()


def label(frame: pd.DataFrame) -> pd.DataFrame:
    """Labels of runs (or rows): every IDENTITY column as a string (see the module docstring)."""
    frame = frame.copy()
    norms = frame["norm"] if "norm" in frame else pd.Series("linf", index=frame.index)
    frame["eps"] = [format_eps(eps, norm) for eps, norm in zip(frame["eps"], norms)]
    frame["steps"] = frame["steps"].map(_text)
    frame["seed"] = frame["seed"].map(_text)
    frame["weights"] = frame["weights"].map(weights_label)
    params = frame["defense_params"] if "defense_params" in frame else pd.Series(None, index=frame.index)
    frame["defense"] = [defense_label(d, p) for d, p in zip(frame["defense"], params)]
    for column in ("model", "threat", "attack", "objective"):
        frame[column] = frame[column].map(_text)
    _label_settings(frame)
    return frame


def label_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """A copy of stored rows with every IDENTITY column as its run's label (one label per run hash)."""
    labelled = label(runs(rows)).set_index(RUN)[[c for c in IDENTITY if c != RUN]]
    frame = rows.drop(columns=[c for c in labelled.columns if c in rows], errors="ignore")
    return frame.join(labelled, on=RUN)


def varying(table: pd.DataFrame, columns=SETTINGS) -> list[str]:
    """The settings that take more than one value among the labelled rows of `table`."""
    return [c for c in columns if c in table and table[c].nunique(dropna=False) > 1]


def shown_columns(table: pd.DataFrame) -> list[str]:
    """What a leaderboard shows to tell its rows apart: KEYS, the settings that differ between rows, and the
    run hash when rows still share every label (runs that differ only in what labels do not show, such as the
    contents of a mask file or whether LPIPS was scored)."""
    shown = KEYS + varying(table)
    if len(table) and table.duplicated(shown).any():
        shown.append(RUN)
    return shown


def shared_settings(table: pd.DataFrame) -> list[str]:
    """'data udc-mini', 'split val', ... for the settings every row shares (defaults left out, but data and
    scoring are always stated)."""
    parts = []
    for column in SETTINGS:
        if column not in table or not len(table) or table[column].nunique(dropna=False) != 1:
            continue
        value = table[column].iloc[0]
        if column == "weights_digest" or (value == DEFAULT_LABELS.get(column) and column not in STATED):
            continue
        if value != "-":
            parts.append(f"{SETTING_NAMES.get(column, column)} {value}")
    return parts


def describe(key: dict, columns) -> str:
    """'data udc-mini · settings iterations=50' for the non-default settings among `columns` of a key."""
    parts = []
    for column in columns:
        value = key.get(column, "-")
        if column in SETTINGS and column != "weights_digest" and value not in ("-", "", DEFAULT_LABELS.get(column)):
            parts.append(f"{SETTING_NAMES.get(column, column)} {value}")
    return " · ".join(parts)
