"""Restoration models: `load_model(name, weights=None, device="cpu")`."""

from __future__ import annotations

from pathlib import Path

import torch

from udcbench.errors import SpecError, UnknownNameError
from udcbench.models.base import InputContract, ModelInfo, RestorationModel
from udcbench.models.checkpoints import load_into, read_state_dict
from udcbench.registry import MODELS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_weights(name: str) -> Path | None:
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


def resolve_name(name: str) -> tuple[str, str | None]:
    """A configuration name as is, or a family name ('uformer') -> its configuration with bundled weights."""
    names = MODELS.names()
    if name in names:
        return name, None
    family = [entry.name for entry in MODELS.entries() if entry.info.get("family") == name]
    with_weights = [n for n in family if bundled_weights(n)]
    if with_weights:
        return with_weights[0], name
    if family:
        raise SpecError(f"model family {name!r} has no configuration with bundled weights; pick one of "
                        f"{', '.join(family)} and pass --weights FILE or --weights random")
    families = sorted({entry.info["family"] for entry in MODELS.entries() if "family" in entry.info} - set(names))
    raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(families + names)} (a family name "
                           "picks its configuration with bundled weights; see `udcbench list models`)")


def load_model(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu",
               seed: int = 0) -> RestorationModel:
    """Build a registered model and load its weights.

    weights: None -> the bundled weights (error if the model has none); "random" -> a seeded random init
    (for smoke tests; results are marked as such); a path -> an official or udcbench checkpoint.
    The returned module is in eval mode with frozen parameters; it maps [0,1] images to [0,1] images.
    """
    config, family_name = resolve_name(name)
    entry = MODELS.get(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = entry.factory()
    if entry.info.get("weights_free"):
        if weights not in (None, "random"):
            raise SpecError(f"model {config!r} has no trainable weights; drop --weights")
        label = "none (training-free)"
    elif weights is None:
        path = bundled_weights(config)
        if path is None:
            family = entry.info.get("family", config)
            siblings = [n for n in MODELS.names() if n != config and bundled_weights(n)
                        and MODELS.get(n).info.get("family") == family]
            hint = f" (bundled: {', '.join(siblings)})" if siblings else ""
            raise SpecError(f"model {config!r} has no bundled weights; pass --weights FILE (an official "
                            f"checkpoint) or --weights random{hint}")
        state, _ = read_state_dict(path)
        load_into(net, state, str(path))
        label = f"bundled:{path.name}"
    elif str(weights) == "random":
        label = "random"
    else:
        state, _ = read_state_dict(weights)
        convert = entry.info.get("convert_state")  # e.g. legacy weight-norm keys -> this model's keys
        load_into(net, convert(state) if convert else state, str(weights))
        label = str(Path(weights).resolve())
    parameters = sum(p.numel() for p in net.parameters())
    info = ModelInfo(name=config, family=entry.info.get("family", config), weights=label, parameters=parameters,
                     contract=entry.info["contract"], resolved_from=family_name,
                     extra={"paper": entry.info.get("paper", "")})
    model = RestorationModel(net, info).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


__all__ = ["InputContract", "ModelInfo", "RestorationModel", "bundled_weights", "load_model", "resolve_name"]
