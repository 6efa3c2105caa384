"""The attack protocol: an attack takes a model, inputs, an objective and its reference, and returns
perturbed inputs inside its budget and [0, 1]. Parameters are validated against the registered defaults.

Every attack evaluates the objective through `self.value(model, x, objective, reference)`, so the adaptive
wrappers (EOT, in `adaptive.py`) can change how a value is estimated without touching the attack's loop.
Black-box attacks count their model queries per image in `self.last_queries` (a (B,) int64 tensor); white-box
attacks leave it None. `attack(model, y, objective, reference, generator, mask=...)` applies an optional mask
that restricts δ to a region, for any attack.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from udcbench.errors import SpecError
from udcbench.registry import ATTACKS


def parse_eps(text: str | float, norm: str = "linf") -> float:
    """'8/255' or '0.0314' -> float; in (0, 1] for L∞ budgets, any positive value for L2 budgets."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(text.strip())) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"cannot read eps {text!r}; write it as a fraction like 8/255 or a number like "
                            "0.0314") from None
    if norm == "l2":
        if not value > 0.0:
            raise SpecError(f"an L2 eps must be positive (the L2 norm of δ over the whole image), got {value:g}; "
                            "e.g. --eps 1.0")
        return value
    if not 0.0 < value <= 1.0:
        raise SpecError(f"eps must lie in (0, 1] (images are in [0, 1]), got {value:g}; e.g. --eps 8/255")
    return value


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
    kind = "white-box"

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
        from udcbench.report.leaderboard import format_eps

        inner = ", ".join(f"{k}={format_eps(v, self.norm)}" if k in ("eps", "alpha") and isinstance(v, float)
                          else f"{k}={v}" for k, v in self.params.items())
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
    if "eps" in merged and isinstance(merged["eps"], str):
        norm = entry.info.get("norm", "linf")
        if norm == "base's":  # a wrapper (transfer) budgets in its base attack's norm
            norm = ATTACKS.get(str(merged.get("base"))).info.get("norm", "linf")
        merged["eps"] = parse_eps(merged["eps"], norm)
    if isinstance(merged.get("alpha"), str):
        merged["alpha"] = parse_eps(merged["alpha"], "l2")  # any positive step size, fractions allowed
    return entry.factory(**merged)
