"""The attack protocol: an attack takes a model, inputs, an objective and its reference, and returns
perturbed inputs inside its budget and [0, 1]. Parameters are validated against the registered defaults.

An attack class states its parameters and their defaults once, in its `__init__` signature:
`register_attack_class(cls, paper=...)` registers it under `cls.name` with `defaults=attack_defaults(cls)` and
the class's `norm` and `kind` (an `AttackKind`). The validators shared by several attacks (`check_linf_eps`,
`check_steps`, `check_alpha`) live here too.

Every attack evaluates the objective through `self.value(model, x, objective, reference)`, so the adaptive
wrappers (EOT, in `adaptive.py`) can change how a value is estimated without touching the attack's loop.
Black-box attacks count their model queries per image in `self.last_queries` (a (B,) int64 tensor); white-box
attacks leave it None. `attack(model, y, objective, reference, generator, mask=...)` applies an optional mask
that restricts δ to a region, for any attack.
"""

from __future__ import annotations

import inspect
import math
from enum import Enum
from fractions import Fraction
from typing import Any

import torch

from udcbench.attacks.params import check_names, coerce_params
from udcbench.errors import SpecError
from udcbench.registry import ATTACKS


class AttackKind(str, Enum):
    """What an attack may use of the model. A str: equal to, hashed, formatted and JSON-written as its value
    ('white-box', ...), so code that compares or prints the plain strings keeps working."""

    WHITE_BOX = "white-box"  # gradients of the model
    BLACK_BOX = "black-box"  # model outputs (queries) only
    TRANSFER = "black-box (transfer)"  # never queries the target: crafted on a surrogate
    CROSS_CHECK = "white-box (cross-check)"  # a reference library's white-box attack, to check the native one

    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__

    @property
    def white_box(self) -> bool:
        """Whether the attack differentiates through the model (so EOT and BPDA apply)."""
        return self in (AttackKind.WHITE_BOX, AttackKind.CROSS_CHECK)

    @property
    def black_box(self) -> bool:
        """Whether the attack uses no gradients of the target (score-based or transfer)."""
        return self in (AttackKind.BLACK_BOX, AttackKind.TRANSFER)


def parse_eps(text: str | float, norm: str = "linf") -> float:
    """'8/255' or '0.0314' -> float; in (0, 1] for L∞ budgets, any positive value for L2 budgets."""
    if isinstance(text, bool):
        raise SpecError(f"cannot read eps {text!r}; write it as a fraction like 8/255 or a number like 0.0314")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(text.strip())) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"cannot read eps {text!r}; write it as a fraction like 8/255 or a number like "
                            "0.0314") from None
    if not math.isfinite(value):
        raise SpecError(f"eps must be a finite number, got {value}; e.g. --eps 8/255 (L∞) or --eps 1.0 (L2)")
    if norm == "l2":
        if not value > 0.0:
            raise SpecError(f"an L2 eps must be positive (the L2 norm of δ over the whole image), got {value:g}; "
                            "e.g. --eps 1.0")
        return value
    if not 0.0 < value <= 1.0:
        raise SpecError(f"eps must lie in (0, 1] (images are in [0, 1]), got {value:g}; e.g. --eps 8/255")
    return value


def format_eps(eps: float | None, norm: str | None = "linf") -> str:
    """8/255 for L∞ budgets on the 1/255 grid, 'L2 1' for L2 budgets, '-' for attacks without one (C&W)."""
    if eps is None or (isinstance(eps, float) and eps != eps):
        return "-"
    if norm == "l2":
        return f"L2 {eps:.4g}"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


def check_linf_eps(name: str, eps: float) -> float:
    """An L∞ budget of attack `name`, in (0, 1], as a float (SpecError otherwise)."""
    if not 0 < eps <= 1:
        raise SpecError(f"{name}: eps must lie in (0, 1] (images are in [0, 1]), got {eps:g}; e.g. eps=8/255")
    return float(eps)


def check_steps(name: str, steps: int) -> int:
    """A step count of attack `name`, a whole number ≥ 0, as an int (SpecError otherwise)."""
    if int(steps) != steps or int(steps) < 0:
        raise SpecError(f"{name}: steps must be a whole number ≥ 0, got {steps}")
    return int(steps)


def check_alpha(name: str, alpha: float) -> float:
    """A step size of attack `name`, positive, as a float (SpecError otherwise)."""
    if not alpha > 0:
        raise SpecError(f"{name}: alpha (the step size) must be positive, got {alpha:g}")
    return float(alpha)


def project_linf(adversarial: torch.Tensor, degraded: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto {‖x − y‖∞ ≤ eps} ∩ [0, 1]."""
    return torch.min(torch.max(adversarial, degraded - eps), degraded + eps).clamp(0.0, 1.0)


def project_l2(adversarial: torch.Tensor, degraded: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto {‖x − y‖₂ ≤ eps} (per image), then [0, 1] (clipping only shrinks the norm)."""
    delta = adversarial - degraded
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps / norms, max=1.0)
    return (degraded + delta * factor[:, None, None, None]).clamp(0.0, 1.0)


def l2_normalise(tensor: torch.Tensor) -> torch.Tensor:
    """Per image: tensor / ‖tensor‖₂ (zero stays zero)."""
    norms = tensor.flatten(1).norm(dim=1).clamp_min(1e-12)
    return tensor / norms[:, None, None, None]


def cpu_rand(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """U(0,1) drawn on the CPU generator (so a seed gives the same numbers on any device), moved to `like`."""
    return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)


class BestTracker:
    """Keeps, per image, the input with the highest objective value seen so far."""

    def __init__(self, adversarial: torch.Tensor, value: torch.Tensor):
        self.adversarial = adversarial.detach().clone()
        self.value = value.detach().clone()

    def update(self, adversarial: torch.Tensor, value: torch.Tensor) -> None:
        with torch.no_grad():
            better = value.detach() > self.value
            self.adversarial = torch.where(better[:, None, None, None], adversarial.detach(), self.adversarial)
            self.value = torch.where(better, value.detach(), self.value)


class Attack:
    """Base class: subclasses set `name`, `norm` ("linf" | "l2" | "none"), `kind` and implement `perturb`."""

    name = "attack"
    norm = "linf"
    kind = AttackKind.WHITE_BOX

    def __init__(self, **params):
        self.params = params
        self.last_queries: torch.Tensor | None = None
        self.last_iterations: torch.Tensor | None = None  # iterations run per image, where an attack counts them
        self.inputs: dict[str, torch.Tensor] = {}  # the batch's extra inputs (psf_code, ...), set by the runner

    def required_inputs(self) -> tuple[str, ...]:
        """Extra inputs (beyond the model's own) every sample must supply, e.g. a transfer surrogate's psf_code."""
        return ()

    def value(self, model, adversarial: torch.Tensor, objective, reference: torch.Tensor) -> torch.Tensor:
        """The objective of model(adversarial), shape (B,); differentiable when grad is enabled."""
        return objective(model(adversarial), reference)

    def perturb(self, model, degraded: torch.Tensor, objective, reference: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def check_input(self, shape: tuple[int, ...]) -> None:
        """Refuse (SpecError) a budget that images of `shape` (B, C, H, W) cannot hold, e.g. more SimBA
        iterations than basis directions. Called on the dataset's image sizes before a run writes anything."""

    def ascend(self, model, adversarial: torch.Tensor, objective, reference: torch.Tensor, steps: int,
               update, best: BestTracker | None = None) -> BestTracker:
        """The loop of the iterative gradient attacks: score the iterate, take ∇ of the objective, and move to
        `update(iterate, gradient)` (which steps and projects), `steps` times. Every iterate, the last one
        included (scored without a graph), goes into `best` (created from the first iterate when None)."""
        for step in range(steps + 1):
            last = step == steps
            adversarial = adversarial.detach().requires_grad_(not last)
            with torch.set_grad_enabled(not last):
                value = self.value(model, adversarial, objective, reference)
            if best is None:
                best = BestTracker(adversarial, value)
            else:
                best.update(adversarial, value)
            if last:
                break
            (grad,) = torch.autograd.grad(value.sum(), adversarial)
            with torch.no_grad():
                adversarial = update(adversarial.detach(), grad)
        return best

    def __call__(self, model, degraded: torch.Tensor, objective, reference: torch.Tensor,
                 generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
        """perturb(), with δ restricted to `mask` (1 = may change; broadcastable to the image) when given.
        The model is then attacked through y + mask·δ, so gradients and queries only see the region."""
        if mask is None:
            return self.perturb(model, degraded, objective, reference, generator)
        if degraded.shape[0] > 1:  # attacks may evaluate subsets of a batch: restrict one image at a time
            parts, queries, iterations, inputs = [], [], [], self.inputs
            for i in range(degraded.shape[0]):
                self.inputs = {k: v[i:i + 1] if v.shape[0] == degraded.shape[0] else v for k, v in inputs.items()}
                parts.append(self(model, degraded[i:i + 1], objective, reference[i:i + 1], generator,
                                  mask if mask.shape[0] == 1 else mask[i:i + 1]))
                queries.append(self.last_queries)
                iterations.append(self.last_iterations)
            self.inputs = inputs
            if all(q is not None for q in queries):
                self.last_queries = torch.cat(queries)
            if all(n is not None for n in iterations):
                self.last_iterations = torch.cat(iterations)
            return torch.cat(parts)
        mask = mask.to(degraded.device, degraded.dtype)

        def restricted(x):
            return model(degraded + mask * (x - degraded))

        # hooks for attacks that feed the model a transformed input (DI-FGSM): restrict first, then transform
        restricted.restrict = lambda x: degraded + mask * (x - degraded)
        restricted.unrestricted = model

        for name in ("contract", "info", "extras"):
            if hasattr(model, name):
                setattr(restricted, name, getattr(model, name))
        adversarial = self.perturb(restricted, degraded, objective, reference, generator)
        return (degraded + mask * (adversarial - degraded)).detach()

    def describe(self) -> str:
        """`pgd(eps=8/255, alpha=2/255, steps=20, ...)`: budgets shown as k/255 where they are."""
        inner = ", ".join(f"{k}={format_eps(v, self.norm)}" if k in ("eps", "alpha") and isinstance(v, float)
                          else f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})"

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({inner})"


def _stated_defaults(cls: type) -> dict[str, Any]:
    """The parameters `cls.__init__` names, with their defaults (inspect.Parameter.empty where it states none);
    a `**base` catch-all adds the parent __init__'s (first, in the parent's order; a default stated here wins)."""
    owner = next(k for k in cls.__mro__ if "__init__" in vars(k))
    if owner is Attack:  # Attack's **params are the stored params, not parameters
        return {}
    stated, forwards = {}, False
    for parameter in list(inspect.signature(owner.__init__).parameters.values())[1:]:  # without self
        if parameter.kind is parameter.VAR_POSITIONAL:
            raise TypeError(f"{cls.__name__}.__init__ takes *{parameter.name}; attack parameters are named")
        if parameter.kind is parameter.VAR_KEYWORD:
            forwards = True
        else:
            stated[parameter.name] = parameter.default
    if not forwards:
        return stated
    parent = owner.__mro__[1]
    return {**_stated_defaults(parent), **stated}


def attack_defaults(cls: type) -> dict[str, Any]:
    """{parameter: default} of attack class `cls`, in signature order, read from its `__init__` — the one place
    an attack states them (registered as the entry's "defaults"; `make_attack` accepts exactly these keys).
    A subclass that extends its parent's parameters takes `**base` and forwards it: the parent's parameters
    come first, then its own; a default it restates for a parent parameter replaces the parent's in place."""
    defaults = _stated_defaults(cls)
    missing = [name for name, default in defaults.items() if default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"{cls.__name__}: parameter(s) {', '.join(missing)} have no default; an attack states a "
                        "default for every parameter")
    return defaults


def register_attack_class(cls: type, *, norm: str | None = None, **info: Any) -> type:
    """Register attack class `cls` as `cls.name`, with defaults=attack_defaults(cls), the class's `norm` (unless
    given: a wrapper that budgets in its base attack's norm passes norm="base's") and its `kind`; `info`
    (paper=...) is stored as well. Returns `cls`."""
    return ATTACKS.register(cls.name, defaults=attack_defaults(cls), norm=cls.norm if norm is None else norm,
                            kind=AttackKind(cls.kind), **info)(cls)


def make_attack(name: str, **params) -> Attack:
    """Build a registered attack; unknown parameters are an error listing the valid ones."""
    entry = ATTACKS.get(name)
    defaults = entry.info.get("defaults", {})
    check_names(name, defaults, params)
    merged = coerce_params(name, defaults, {**defaults, **{k: v for k, v in params.items() if v is not None}})
    if "eps" in merged and isinstance(merged["eps"], str):
        norm = entry.info.get("norm", "linf")
        if norm == "base's":  # a wrapper (transfer) budgets in its base attack's norm
            norm = ATTACKS.get(str(merged.get("base"))).info.get("norm", "linf")
        merged["eps"] = parse_eps(merged["eps"], norm)
    if isinstance(merged.get("alpha"), str):
        merged["alpha"] = parse_eps(merged["alpha"], "l2")  # any positive step size, fractions allowed
    return entry.factory(**merged)
