"""LPIPS-guided PGD: L∞ PGD that maximises the LPIPS distance (Zhang et al., CVPR 2018) of the restored output
from the run's reference (by default the quantised clean output) instead of its MSE — the reference study's
LPIPS-guided attack (Song et al., 2024), and Yu et al.'s (CVPR 2022) LPIPS loss option.

Distance: L∞, ‖δ‖∞ ≤ eps, and y + δ ∈ [0, 1].
Arguments: as `pgd` — eps (8/255), alpha (None -> eps/4), steps (20), random_start (True), restarts (1) —
plus net ("alex" or "vgg": the LPIPS backbone). Needs the LPIPS weights on this machine (see
`udcbench.metrics.lpips`); without them the attack fails when it is built, before a run writes anything.
The run's objective (e.g. mse-clean) still supplies the reference and the logged objective values.
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    attack = make_attack("lpips-pgd", eps=8/255, steps=20)
    adversarial = attack.perturb(model, y, objective, objective.reference(model(y), x), generator)
"""

from __future__ import annotations

from udcbench.attacks.base import register_attack_class
from udcbench.attacks.pgd import PGD
from udcbench.errors import SpecError


class LPIPSPGD(PGD):
    name = "lpips-pgd"

    def __init__(self, *, net: str = "alex", **base):
        """pgd's parameters (`base`: eps, alpha, steps, random_start, restarts), then net."""
        from udcbench.metrics.lpips import check_weights

        if net not in ("alex", "vgg"):
            raise SpecError(f"lpips-pgd: net must be alex or vgg, got {net!r}")
        check_weights(net)  # a clear error now if the weights are not on this machine
        super().__init__(**base)
        self.params["net"] = net

    def value(self, model, adversarial, objective, reference):
        from udcbench.metrics.lpips import load_lpips

        return load_lpips(self.params["net"], device=adversarial.device)(model(adversarial), reference)


register_attack_class(LPIPSPGD,
                      paper="LPIPS-guided attack of Song et al., arXiv 2402.13629 (2024); Yu et al., CVPR 2022")
