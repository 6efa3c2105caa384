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

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return image

    def swap_weights(self, model):
        return model


@dataclass
class Defense:
    spec: str
    components: list[DefenseComponent]

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for component in self.components:
            image = component.transform(image, generator)
        return image

    def prepare_model(self, model):
        for component in self.components:
            model = component.swap_weights(model)
        return model

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
