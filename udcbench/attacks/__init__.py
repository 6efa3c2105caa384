"""Attacks on restoration models, and the objectives they maximise."""

from udcbench.attacks.base import Attack, make_attack, parse_eps
from udcbench.attacks.objectives import MSEToClean, MSEToGroundTruth, Objective, make_objective

__all__ = ["Attack", "MSEToClean", "MSEToGroundTruth", "Objective", "make_attack", "make_objective", "parse_eps"]
