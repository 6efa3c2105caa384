"""random-sign: L∞ random-sign noise at the full budget, the best of `queries` draws (score-based, black-box).

Each draw is δ = eps·s with s uniformly random in {−1, +1} per pixel and channel, clipped so that y + δ stays in
[0, 1]; the model is queried once per draw (no gradients) and, per image, the draw that raises the attack's
objective most is returned. With queries=1 it is plain random-sign noise. It is the control every gradient or
query attack should beat by a wide margin: a model that loses as much PSNR to random-sign as to PGD at the same
ε is not being attacked, it is being fed noise.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
Arguments (defaults in brackets): eps [8/255], queries [10] (draws, each one model query; 1 to 10,000,000).
Queries (self.last_queries, per image): exactly `queries`. Randomness: the runner's per-image CPU generator, so
the same seed gives the same noise on any device and for any --limit.
Shapes: degraded (B, C, H, W) in [0, 1] -> (B, C, H, W).

Importing this module registers the attack; udcbench imports it through the entry point in pyproject.toml.
"""

from __future__ import annotations

import torch

from udcbench.attacks.base import (Attack, AttackKind, BestTracker, check_linf_eps, cpu_rand, project_linf,
                                   register_attack_class)
from udcbench.errors import SpecError


class RandomSign(Attack):
    name = "random-sign"  # the registered name: `--attack random-sign`
    norm = "linf"  # what eps measures: `--norm`, listings and the leaderboard's ε column read it
    kind = AttackKind.BLACK_BOX  # model outputs only, so EOT/BPDA do not apply and queries are reported

    # the parameters and their defaults are stated once, here: `register_attack_class` reads them from this
    # signature, and `-p KEY=VALUE` / --eps / --queries / suite files are checked and typed against them
    def __init__(self, eps: float = 8 / 255, queries: int = 10):
        if queries < 1:
            raise SpecError(f"random-sign: queries (the number of random draws) must be at least 1, got {queries}; "
                            "e.g. --queries 10")
        super().__init__(eps=check_linf_eps("random-sign", eps), queries=int(queries))

    def perturb(self, model, degraded, objective, reference, generator):
        eps, queries = self.params["eps"], self.params["queries"]
        degraded = degraded.detach()
        best = None
        with torch.no_grad():
            for _ in range(queries):
                signs = torch.where(cpu_rand(degraded.shape, generator, degraded) < 0.5, -1.0, 1.0)
                candidate = project_linf(degraded + eps * signs.to(degraded.dtype), degraded, eps)
                value = self.value(model, candidate, objective, reference)
                if best is None:
                    best = BestTracker(candidate, value)
                else:
                    best.update(candidate, value)
        self.last_queries = torch.full((degraded.shape[0],), queries, dtype=torch.int64)
        return best.adversarial


register_attack_class(RandomSign, paper="random-sign L∞ noise control (udcbench-plugin-example)")
