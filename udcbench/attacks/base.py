"""The attack protocol: an attack takes a model, inputs, an objective and its reference, and returns
perturbed inputs inside its budget and [0, 1]. Parameters are validated against the registered defaults."""

from __future__ import annotations

from fractions import Fraction

import torch

from udcbench.errors import SpecError
from udcbench.registry import ATTACKS


def parse_eps(text: str | float) -> float:
    """'8/255' or '0.0314' -> float in (0, 1]."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(text.strip())) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"cannot read eps {text!r}; write it as a fraction like 8/255 or a number like "
                            "0.0314") from None
    if not 0.0 < value <= 1.0:
        raise SpecError(f"eps must lie in (0, 1] (images are in [0, 1]), got {value:g}; e.g. --eps 8/255")
    return value


class Attack:
    """Base class: subclasses set `name` and implement `perturb`."""

    name = "attack"

    def __init__(self, **params):
        self.params = params

    def perturb(self, model, degraded: torch.Tensor, objective, reference: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        """`pgd(eps=8/255, alpha=2/255, steps=20, ...)`: budgets shown as k/255 where they are."""
        from udcbench.report.leaderboard import format_eps

        inner = ", ".join(f"{k}={format_eps(v)}" if k in ("eps", "alpha") and isinstance(v, float) else f"{k}={v}"
                          for k, v in self.params.items())
        return f"{self.name}({inner})"

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})"


def make_attack(name: str, **params) -> Attack:
    """Build a registered attack; unknown parameters are an error listing the valid ones."""
    entry = ATTACKS.get(name)
    defaults = entry.info.get("defaults", {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise SpecError(f"attack {name!r} has no parameter(s) {', '.join(unknown)}; its parameters are "
                        f"{', '.join(f'{k}={v}' for k, v in defaults.items())}")
    merged = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    return entry.factory(**merged)
