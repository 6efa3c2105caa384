"""Fine-tuning a restoration model on defended (purified) inputs, and the `ft` defense that swaps its weights in.

The reference study (Song et al., arXiv 2402.13629, 2024; Dong et al., Sensors 25(11):3386, 2025) fine-tunes
each restoration model on images purified with varied diffusion steps, so it learns to restore what
purification leaves behind. Here:

- inputs: random crops of the train split (flips), each passed through the defense's input transform; for
  `purify` every crop gets its own t* drawn uniformly from `t_range` (default 10–50 of 1000: around the test-time
  t* of 30 that purifies best on udc-mini), for diversity;
- optional adversarial fine-tuning (`adv="pgd"`, PGD-AT, Madry et al. ICLR 2018): each crop is first attacked on
  the fly (PGD L∞ against the current weights, `adv_eps`, `adv_steps`, α = ε/4, random start), then defended;
- loss: L2 + 0.01 · VGG-19 perceptual (relu3_3 and relu4_2 features, as the study) when ImageNet VGG-19
  weights are given (`vgg19=PATH`, torchvision's `vgg19-dcbb9e9d.pth` layout; nothing is downloaded); otherwise
  L1 + 0.2 · (1 − SSIM), a perceptually weighted loss that needs no weights;
- Adam, cosine schedule from `lr`, gradient clipping, EMA of the weights (what is saved), all seeded.

    udcbench finetune --model uformer --defense purify --data udc-mini --steps 200 --seed 0 \
        --out udcbench/models/weights/uformer-nano-ft.safetensors        # the bundled ft weights

The `ft` defense loads `<model>-ft.safetensors` bundled in udcbench/models/weights/ (or `ft:FILE`), strictly and
when the run is prepared (`ready`), so a bad file is refused before anything is written.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.defenses.base import DefenseComponent, Setting
from udcbench.errors import SpecError
from udcbench.registry import register_defense

VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
                "M")
VGG19_TAPS = (15, 22)  # relu3_3 and relu4_2 in torchvision's `features` indices
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGPerceptual(nn.Module):
    """Mean squared distance of VGG-19 relu3_3 and relu4_2 features (ImageNet-normalised inputs)."""

    def __init__(self, weights: str | Path):
        super().__init__()
        from udcbench.metrics.lpips import check_keys, load_state_dict, vgg_features

        self.features = vgg_features(VGG19_CONFIG)[:VGG19_TAPS[-1] + 1]
        path = Path(weights)
        state = load_state_dict(path, "VGG-19 weights")
        # the official file holds every layer and the classifier; check (strictly) the layers up to relu4_2
        state = {k: v for k, v in state.items() if k.startswith("features.") and k.split(".")[1].isdigit()
                 and int(k.split(".")[1]) <= VGG19_TAPS[-1]}
        expected = {f"features.{k}": v.shape for k, v in self.features.state_dict().items()}
        check_keys(state, expected, path, "VGG-19 weights")
        self.features.load_state_dict({k[len("features."):]: state[k].float() for k in expected})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = (x - self.mean) / self.std, (y - self.mean) / self.std
        total = x.new_zeros(())
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index in VGG19_TAPS:
                total = total + F.mse_loss(x, y)
        return total


@dataclass(frozen=True)
class FinetuneConfig:
    model: str = "uformer"
    defense: str = "purify"
    data: str = "udc-mini"
    steps: int = 300
    batch_size: int = 8
    crop: int = 128
    lr: float = 2e-4
    t_min: int = 10
    t_max: int = 50
    adv: str | None = None  # "pgd": PGD-AT on the fly
    adv_eps: float = 8 / 255
    adv_steps: int = 5
    vgg19: str | None = None
    ema: float = 0.995
    clip: float = 0.5
    seed: int = 0


def make_loss(vgg19: str | None) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    """(loss(output, target), its description)."""
    from udcbench.metrics import ssim

    if vgg19 is not None:
        perceptual = VGGPerceptual(vgg19)
        return (lambda out, gt: F.mse_loss(out, gt) + 0.01 * perceptual(out, gt)), "L2 + 0.01·VGG-19(relu3_3, relu4_2)"
    return (lambda out, gt: F.l1_loss(out, gt) + 0.2 * (1 - ssim(out, gt).mean())), "L1 + 0.2·(1 − SSIM)"


def defended_inputs(defense, inputs: torch.Tensor, config: FinetuneConfig, generator: torch.Generator) -> torch.Tensor:
    """The crops through the defense's transform; purification with a t* drawn per crop from [t_min, t_max]."""
    from udcbench.defenses.purify import purify

    for component in defense.components:
        if getattr(component, "name", "") == "purify":
            t_star = torch.randint(config.t_min, config.t_max + 1, (inputs.shape[0],), generator=generator)
            inputs = purify(component.prior, inputs, t_star, component.steps, component.sampler, generator,
                            component.tile, component.overlap, index=getattr(component, "index", "udcbench"),
                            guide=getattr(component, "guide", None))
        else:
            inputs = component.transform(inputs, generator)
    return inputs


def finetune(config: FinetuneConfig, out: str | Path, command: str = "",
             progress: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune `config.model` (from its bundled weights) on defended train crops; save the EMA weights."""
    from udcbench.attacks import make_attack, make_objective
    from udcbench.data import load_dataset
    from udcbench.defenses import make_defense
    from udcbench.models import load_model
    from udcbench.models.train import TrainConfig, _random_batch, finish, optimise, set_cosine_lr

    if config.steps < 1 or config.batch_size < 1:
        raise SpecError("--steps and --batch-size must be positive")
    if not 0 <= config.t_min <= config.t_max:
        raise SpecError(f"the t* range must satisfy 0 ≤ t_min ≤ t_max, got {config.t_min}..{config.t_max}")
    if config.adv not in (None, "pgd"):
        raise SpecError(f"--adv takes pgd (PGD adversarial fine-tuning), got {config.adv!r}; use --adv pgd, or leave --adv out")
    defense = make_defense(config.defense)
    if any(c.name == "ft" for c in defense.components):
        raise SpecError("fine-tune on an input defense (purify, jpeg:75, …), not on `ft` itself; e.g. --defense purify")
    loss_fn, loss_name = make_loss(config.vgg19)
    model = load_model(config.model)
    samples = list(load_dataset(config.data, split="train"))
    smallest = min(min(s.degraded.shape[-2:]) for s in samples)
    if smallest < config.crop:
        raise SpecError(f"--crop {config.crop} exceeds the smallest train image ({smallest} px); lower it")
    net = model.net
    for parameter in net.parameters():
        parameter.requires_grad_(True)
    ema = copy.deepcopy(net).eval()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    crops = TrainConfig(model=config.model, batch_size=config.batch_size, crop=config.crop)
    attack = make_attack("pgd", eps=config.adv_eps, steps=config.adv_steps) if config.adv else None
    objective = make_objective("mse-clean")
    started = time.time()
    for step in range(config.steps):
        set_cosine_lr(optimizer, config.lr, step, config.steps)
        inputs, targets, extras = _random_batch(samples, crops, generator, model.contract.extra_inputs)
        if attack is not None:  # PGD-AT: attack the current weights (frozen for the attack), then defend
            net.eval()
            bound = model.bind(**extras)
            with torch.no_grad():
                reference = objective.reference(bound(inputs), targets, inputs)
            inputs = attack(bound, inputs, objective, reference, generator).detach()
        net.train()
        with torch.no_grad():
            inputs = defended_inputs(defense, inputs, config, generator)
        loss = loss_fn(model(inputs, clamp=False, **extras), targets)
        optimise(optimizer, net, ema, loss, config, step, progress)
    return finish(model, ema, config, out, started, command=command, loss=loss_name,
                  finetuned_from=model.info.weights)


class FineTuned(DefenseComponent):
    """`ft` / `ft:FILE` (or ft:weights=FILE): the restoration model with fine-tuned weights (bundled
    `<model>-ft.safetensors`, or FILE). Its input transform is the identity; the swapped model is a restoration
    model, counted as such (no `networks`)."""

    name = "ft"
    settings = {"weights": Setting(None, str, "a weights file", example="weights=FILE.safetensors")}
    shorthand = "weights"
    verbatim = True  # ft:FILE takes the whole argument, whatever ',' or '=' the path holds

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        self.file: str | None = self.configure(argument)["weights"]  # None: the model's bundled -ft weights
        if self.file is not None and not Path(self.file).expanduser().is_file():
            raise SpecError(f"ft:{argument}: no such weights file; pass ft (bundled weights) or ft:FILE.safetensors "
                            "(made by `udcbench finetune`)")
        self._cache: dict[str, nn.Module] = {}

    def weights_for(self, model_name: str) -> Path:
        from udcbench.models import WEIGHTS_DIR

        if self.file is not None:
            return Path(self.file).expanduser()
        path = WEIGHTS_DIR / f"{model_name}-ft.safetensors"
        if not path.is_file():
            bundled = sorted(p.name[:-len("-ft.safetensors")] for p in WEIGHTS_DIR.glob("*-ft.safetensors"))
            raise SpecError(f"no fine-tuned weights are bundled for {model_name} (bundled for: "
                            f"{', '.join(bundled) or 'none'}); make them with `udcbench finetune --model "
                            f"{model_name} --out FILE` and pass --defense ft:FILE")
        return path

    def record(self, model_name: str) -> dict:
        from udcbench.spec import file_digest

        path = self.weights_for(model_name)
        return {"weights": ("file:" if self.file is not None else "bundled:") + file_digest(path)}

    def ready(self, model, dataset, seed: int, device, defense) -> None:
        """Load the fine-tuned weights now (strictly: keys, shapes, finite values; never pickled code), while the
        run is prepared, so that a bad ft:FILE is refused before anything is written."""
        self.swap_weights(model)

    def swap_weights(self, model):
        """The same network with the fine-tuned weights, bound to the same per-image inputs."""
        from udcbench.models import load_model
        from udcbench.models.base import BoundModel

        inner = model.model if isinstance(model, BoundModel) else model
        name = inner.info.name
        if name not in self._cache:
            device = next(iter(inner.parameters()), torch.empty(0)).device
            self._cache[name] = load_model(name, weights=self.weights_for(name), device=device,
                                           options=inner.info.extra.get("options"))
        swapped = self._cache[name]
        return swapped.bind(**model.extras) if isinstance(model, BoundModel) else swapped


register_defense("ft", kind="weights", description="fine-tuned weights: the model fine-tuned on purified inputs "
                 "(`udcbench finetune`); ft:FILE for your own")(FineTuned)
