"""Loading released guided-diffusion (ADM) checkpoints as purification priors, strictly and safely.

A released file (e.g. `256x256_diffusion_uncond.pt`) is a plain `torch.save` of the UNetModel state dict. It is
read with `torch.load(weights_only=True)` (models.checkpoints: no pickled code runs), checked key by key and shape by
shape against the `ADMUNet` its config describes (one error naming a few missing / unexpected / mis-shaped keys and
the config to try) and for NaN / Inf values, and loaded as float32 into a network built on the meta device (no
second copy of 550 M parameters).

    prior = load_adm_prior("256x256_diffusion_uncond.pt", "adm-256-uncond")
"""

from __future__ import annotations

from pathlib import Path

import torch

from udcbench.defenses.adm import ADM_CONFIGS, ADMUNet, NOISE_SCHEDULES, complete_flags, parse_adm_config
from udcbench.defenses.diffusion import DiffusionPrior, Schedule
from udcbench.errors import CheckpointError, SpecError
from udcbench.models.checkpoints import check_finite, few, load_file, read_state_dict

FIX = ("pass the config= that matches this checkpoint, e.g. config=adm-256-uncond, or adm:flag=value;… for other "
       "ADM checkpoints")


def _read_adm_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, read with weights_only; also a state dict nested under "ema" or "model"."""
    try:
        return read_state_dict(path)[0]
    except CheckpointError as error:
        if "holds no state dict" not in str(error):
            raise
        original = error
    outer, _ = load_file(path)  # read once more (the first read said the file is readable): the nested layouts
    for key in ("ema", "model"):
        inner = outer.get(key) if isinstance(outer, dict) else None
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in inner.items()}
    raise original


def _check_fit(own: dict[str, torch.Size], state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Strict key and shape check with one readable error (the style of models.checkpoints.load_into)."""
    if "label_emb.weight" in state:
        raise CheckpointError(f"{source} is a class-conditional ADM checkpoint (it has label_emb.weight); udcbench "
                              "purifies with unconditional models, e.g. 256x256_diffusion_uncond.pt")
    signature = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
    if not all(key in state for key in signature):
        raise CheckpointError(f"{source} is not a guided-diffusion (ADM) UNet state dict: it lacks "
                              f"{', '.join(k for k in signature if k not in state)} (its keys start "
                              f"{few(sorted(state))}); pass an OpenAI guided-diffusion checkpoint such as "
                              "256x256_diffusion_uncond.pt, or load udcbench priors with load_prior")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k])}"
              for k in own if k in state and state[k].shape != own[k]]
    if missing or unexpected or shapes:
        parts = [f"{len(items)} {kind}: {few(items)}" for kind, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        hint = (f"; the file looks like num_channels={state['time_embed.0.weight'].shape[1]}, "
                f"learn_sigma={str(state['out.2.weight'].shape[0] == 6).lower()}")
        raise CheckpointError(f"{source} does not fit ADMUNet({name}): " + "; ".join(parts) + hint + " — " + FIX)


def load_adm_prior(path: str | Path, config: str | dict) -> DiffusionPrior:
    """A guided-diffusion checkpoint as a DiffusionPrior (float32, eval mode, no grads), loaded strictly."""
    path = Path(path)  # config: a name of ADM_CONFIGS, "adm:flag=value;…", or a dict of flags
    flags = parse_adm_config(config) if isinstance(config, str) else complete_flags(dict(config))
    name = config.strip() if isinstance(config, str) and config.strip() in ADM_CONFIGS else "adm"
    state = _read_adm_state(path)
    with torch.device("meta"):
        unet = ADMUNet(flags)
    _check_fit({k: v.shape for k, v in unet.state_dict().items()}, state, str(path), name)
    check_finite(state, str(path))
    unet.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True, assign=True)
    steps = flags["diffusion_steps"]
    schedule = Schedule(T=steps, beta_start=1e-4 * 1000 / steps, beta_end=0.02 * 1000 / steps,
                        kind=NOISE_SCHEDULES[flags["noise_schedule"]])
    prior = DiffusionPrior(unet, schedule, size=flags["image_size"], multiple=unet.multiple,
                           learned_sigma=flags["learn_sigma"],
                           meta={"source": str(path), "config": name, "architecture": "adm"})
    prior.eval()
    for parameter in prior.parameters():
        parameter.requires_grad_(False)
    return prior


def save_adm_state_dict(unet: ADMUNet, path: str | Path) -> None:
    """Write the state dict the way guided-diffusion releases it: a plain torch.save of the UNet's tensors."""
    torch.save(unet.state_dict(), Path(path))


def load_purify_prior(path: str, config: str | None) -> DiffusionPrior:
    """prior=PATH: a guided-diffusion .pt with config=, else a udcbench .safetensors or a diffusers folder."""
    from udcbench.defenses.diffusion import load_prior

    if config is None:
        return load_prior(path)
    if not path.endswith((".pt", ".pth")):
        raise SpecError(f"purify config= describes guided-diffusion .pt checkpoints, but prior={path} is not one; "
                        "drop config= (udcbench and diffusers priors carry their configuration)")
    return load_adm_prior(path, config)
