"""Transfer attack: craft the perturbation with a white-box attack on a surrogate model, then evaluate it on
the target (Papernot et al., "Transferability in Machine Learning", 2016; boosted by MI-/DI-FGSM). The target
is never queried: `last_queries` is 0 for every image.

Arguments: surrogate ("nafnet-nano": any model name, with its bundled weights; or a distilled surrogate file
written by `udcbench distill`, PATH.safetensors, whose header names its architecture), surrogate_weights
(None: bundled; or a checkpoint path; not with a surrogate file, which carries its own weights), base ("pgd":
any white-box attack), and the base attack's eps (8/255), alpha (None: the base's default) and steps (20).
For objectives computed from the clean output (mse-clean, l1-clean, lpips-clean) the reference is the
surrogate's own clean output — the attacker has no access to the target's; ground-truth and targeted
references are used as they are. A surrogate file is recorded as surrogate=<its arch>, surrogate_weights=<the
path>, so a run's hash covers the file's digest as it does a surrogate checkpoint's.
Shapes: degraded (B, 3, H, W) in [0, 1] -> (B, 3, H, W).

    attack = make_attack("transfer", surrogate="dwformer-nano", base="mifgsm", eps=8/255)
    attack = make_attack("transfer", surrogate="udcbench/models/weights/surrogate-uformer-nano.safetensors")
    adversarial = attack.perturb(target_model, y, objective, reference, generator)
"""

from __future__ import annotations

import torch

from udcbench.attacks.base import Attack, AttackKind, make_attack, register_attack_class
from udcbench.errors import SpecError
from udcbench.registry import ATTACKS


class Transfer(Attack):
    name = "transfer"
    kind = AttackKind.TRANSFER

    def __init__(self, surrogate: str = "nafnet-nano", surrogate_weights: str | None = None, base: str = "pgd",
                 eps: float = 8 / 255, alpha: float | None = None, steps: int = 20):
        from udcbench.models import load_model
        from udcbench.models.surrogates import is_surrogate_path, load_surrogate

        entry = ATTACKS.get(base)
        if entry.info.get("kind") != AttackKind.WHITE_BOX or base == "transfer":
            raise SpecError(f"transfer: base attack must be a white-box attack, {base!r} is "
                            f"{entry.info.get('kind', 'not one')}; e.g. base=pgd, mifgsm or difgsm")
        accepted = entry.info.get("defaults", {})
        given = {"eps": eps, "alpha": alpha, "steps": steps}
        self.base = make_attack(base, **{k: v for k, v in given.items() if k in accepted})
        self.norm = self.base.norm
        if is_surrogate_path(surrogate):  # a distilled surrogate: fails now, before a run writes
            if surrogate_weights is not None:
                raise SpecError(f"transfer: surrogate={surrogate} is a distilled surrogate file with its own "
                                "weights; drop surrogate_weights")
            self.surrogate = load_surrogate(surrogate)
            surrogate_weights = str(surrogate)
        else:
            self.surrogate = load_model(surrogate, weights=surrogate_weights)  # fails now, before a run writes
        super().__init__(surrogate=self.surrogate.info.name, surrogate_weights=surrogate_weights, base=base,
                         **self.base.params)

    def required_inputs(self) -> tuple[str, ...]:
        return tuple(self.surrogate.contract.extra_inputs)

    def _bound_surrogate(self, target, device):
        """The surrogate with the batch's extra inputs bound (the runner puts every input the dataset supplies
        into self.inputs; a target model that binds some of its own is the fallback for direct calls)."""
        surrogate = self.surrogate.to(device)
        needs = surrogate.contract.extra_inputs
        if not needs:
            return surrogate
        extras = {**getattr(target, "extras", {}), **self.inputs}
        missing = [name for name in needs if name not in extras]
        if missing:
            raise SpecError(f"transfer: surrogate {surrogate.info.name} needs {', '.join(missing)}, which this "
                            "dataset does not supply; pick a surrogate without extra inputs")
        return surrogate.bind(**{name: extras[name].to(device) for name in needs})

    def perturb(self, model, degraded, objective, reference, generator):
        surrogate = self._bound_surrogate(model, degraded.device)
        if objective.uses_clean_output:
            with torch.no_grad():
                reference = objective.reference(surrogate(degraded), reference, degraded)
        adversarial = self.base.perturb(surrogate, degraded, objective, reference, generator)
        self.last_queries = torch.zeros(degraded.shape[0], dtype=torch.int64)
        return adversarial


register_attack_class(Transfer, norm="base's",  # its eps is in the base attack's norm
                      paper="Papernot et al., arXiv 1605.07277 (2016); surrogate crafted with any white-box attack")
