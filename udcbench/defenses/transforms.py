"""Input-transform defenses."""

from __future__ import annotations

from udcbench.defenses.base import DefenseComponent
from udcbench.errors import SpecError
from udcbench.registry import register_defense


class NoDefense(DefenseComponent):
    """The identity: the undefended model (the baseline every defense is compared with)."""

    name = "none"

    def __init__(self, argument: str | None = None):
        if argument is not None:
            raise SpecError(f"defense 'none' takes no argument, got 'none:{argument}'")
        super().__init__(None)


register_defense("none", kind="identity", description="no defense: the undefended model")(NoDefense)
