"""Attack parameters as typed values: the one check every attack's parameters pass before the attack is built,
whoever gave them (`-p KEY=VALUE`, --steps, a suite file, the Python API).

A parameter's type is its default's (int, float or bool; `alpha` and the other auto-chosen `None` defaults are
numbers too). A count must be a whole number — 2.5 steps is refused, never truncated — at least 0 and at most
what udcbench will run (MAXIMA: a 10^20-step run would never end); a float must be finite. Fractions such as
2/255 are read exactly. Values of other types (strings such as basis=dct) pass through to the attack."""

from __future__ import annotations

import math
from fractions import Fraction

from udcbench.errors import SpecError
from udcbench.registry import did_you_mean

# `None` defaults that stand for a number chosen by the attack
AUTO_NUMBERS = {"alpha": float, "const": float, "freq_dims": int}
# the largest count udcbench runs; beyond it a run would take years, so it is a typo
MAXIMA = {"steps": 100_000, "restarts": 1_000, "search_steps": 1_000, "queries": 10_000_000,
          "iterations": 10_000_000}
MAX_COUNT = 1_000_000_000


def _number(attack: str, key: str, value, example) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpecError(f"{attack}: {key} must be a number, got {value!r}; e.g. -p {key}={example}")
    if isinstance(value, str):
        try:
            value = Fraction(value.strip()) if "/" in value else float(value)
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"{attack}: {key} must be a number, got {value!r}; e.g. -p {key}={example}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{attack}: {key} must be a finite number, got {value}; e.g. -p {key}={example}")
    return value


def _count(attack: str, key: str, value, example) -> int:
    number = _number(attack, key, value, example)
    if number != int(number):
        raise SpecError(f"{attack}: {key} must be a whole number, got {float(number):g}; e.g. -p {key}="
                        f"{math.floor(number)}")
    count, largest = int(number), MAXIMA.get(key, MAX_COUNT)
    if count < 0:
        raise SpecError(f"{attack}: {key} must be ≥ 0, got {count}; e.g. -p {key}={example}")
    if count > largest:
        raise SpecError(f"{attack}: {key}={count} is more than udcbench runs (at most {largest:,}); give a "
                        "smaller value")
    return count


def _flag(attack: str, key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SpecError(f"{attack}: {key} must be true or false, got {value!r}; e.g. -p {key}=false")


def check_names(attack: str, defaults: dict, params, where: str = "") -> None:
    """SpecError naming every parameter of `params` that the attack does not have, each with the closest of its
    parameters (`step` -> did you mean 'steps'?), and listing them (their defaults: `udcbench list attacks`)."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        named = ", ".join(f"{key}{did_you_mean(key, defaults)}" for key in unknown)
        raise SpecError(f"{where}attack {attack!r} has no parameter(s) {named}; its parameters are "
                        f"{', '.join(defaults)} (defaults: `udcbench list attacks`)")


def coerce_params(attack: str, defaults: dict, params: dict) -> dict:
    """`params` (defaults merged in) with every number and flag checked and typed by its default's type."""
    typed = {}
    for key, value in params.items():
        default = defaults.get(key)
        kind = type(default) if default is not None else AUTO_NUMBERS.get(key)
        if value is None or key == "eps" or kind not in (bool, int, float):
            typed[key] = value  # eps has its own parser (fractions, the norm's range); strings pass
        elif kind is bool:
            typed[key] = _flag(attack, key, value)
        elif kind is int:
            typed[key] = _count(attack, key, value, default if default is not None else 1)
        else:
            example = "2/255" if key == "alpha" else default if default is not None else 1
            number = _number(attack, key, value, example)
            typed[key] = value if isinstance(value, str) and "/" in value else float(number)
    return typed
