"""Defenses: input transforms and weight swaps, composed with '+'."""

from udcbench.defenses.base import Defense, DefenseComponent, make_defense, parse_defense

__all__ = ["Defense", "DefenseComponent", "make_defense", "parse_defense"]
