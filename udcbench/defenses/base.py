"""The defense protocol: an input transform, a weights swap, or both.

A spec string composes registered components left to right with '+', each optionally with an argument after
':' (`purify:auto+ft`, `jpeg:75`). `make_defense(spec)` validates every component before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from udcbench.errors import SpecError
from udcbench.registry import DEFENSES


class DefenseComponent:
    """One stage: `transform` maps [0,1] inputs to [0,1] inputs; `swap_weights` may return another model."""

    name = "component"

    def __init__(self, argument: str | None = None):
        self.argument = argument

    randomized = False  # draws randomness in transform (adaptive attacks then use EOT)

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return image

    def differentiable_transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The transform as an adaptive attack differentiates it: exact in value; components whose transform
        has no useful gradient (JPEG, quantisation) override this with BPDA."""
        return self.transform(image, generator)

    def swap_weights(self, model):
        return model

    def record(self, model_name: str) -> dict:
        """What this component resolved to for `model_name` — settings and digests of any weights it loads.
        Written with every row and hashed into the run, so new weights never reuse old results."""
        return {}


@dataclass
class Defense:
    spec: str
    components: list[DefenseComponent]

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for component in self.components:
            image = component.transform(image, generator)
        return image

    def differentiable_transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for component in self.components:
            image = component.differentiable_transform(image, generator)
        return image

    @property
    def randomized(self) -> bool:
        return any(component.randomized for component in self.components)

    def prepare_model(self, model):
        from udcbench.models.memory import is_checkpointing, set_checkpointing

        swapped = model
        for component in self.components:
            swapped = component.swap_weights(swapped)
        if swapped is not model and is_checkpointing(model):  # --memory low carries over to fine-tuned weights
            set_checkpointing(swapped, True)
        return swapped

    def record(self, model_name: str) -> list[dict]:
        """The components' records (`DefenseComponent.record`), for those that have one."""
        return [{"component": c.name, **found} for c in self.components if (found := c.record(model_name))]

    @property
    def is_identity(self) -> bool:
        return all(c.name == "none" for c in self.components)


def parse_defense(spec: str) -> list[tuple[str, str | None]]:
    """'purify:auto+ft' -> [('purify', 'auto'), ('ft', None)]."""
    text = (spec or "").strip()
    if not text:
        raise SpecError("empty defense; use --defense none, or compose registered defenses like a+b")
    parts = []
    for piece in text.split("+"):
        name, _, argument = piece.strip().partition(":")
        if not name:
            raise SpecError(f"defense {spec!r} has an empty component; write components joined by '+', e.g. a+b")
        parts.append((name, argument or None))
    return parts


def make_defense(spec: str) -> Defense:
    components = []
    for name, argument in parse_defense(spec):
        entry = DEFENSES.get(name)
        components.append(entry.factory(argument))
    return Defense(spec=spec.strip(), components=components)
