"""Attacks on restoration models, the objectives they maximise, and the adaptive wrappers (BPDA, EOT)."""

from udcbench.attacks.adaptive import bpda, eot
from udcbench.attacks.base import Attack, make_attack, parse_eps
from udcbench.attacks.objectives import MSEToClean, MSEToGroundTruth, Objective, make_objective, parse_mask

__all__ = ["Attack", "MSEToClean", "MSEToGroundTruth", "Objective", "bpda", "eot", "make_attack", "make_objective",
           "parse_eps", "parse_mask"]
