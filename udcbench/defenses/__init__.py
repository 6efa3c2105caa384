"""Defenses: input transforms and weight swaps, composed with '+'."""

from udcbench.defenses.base import (Defense, DefenseComponent, Setting, defense_label, make_defense,
                                    parse_defense)

__all__ = ["Defense", "DefenseComponent", "Setting", "defense_label", "make_defense", "parse_defense"]
