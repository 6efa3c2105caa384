"""Reading checkpoints safely: safetensors, or .pth/.pt with torch.load(weights_only=True) only.

Wrappings are unwrapped in the order params_ema > params > state_dict > plain; a DataParallel `module.`
prefix is stripped. A mismatch raises one CheckpointError listing missing/unexpected keys and shape
mismatches (the first few of each).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from udcbench.errors import CheckpointError

WRAPPERS = ("params_ema", "params", "state_dict")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, metadata) from a checkpoint file, unwrapped and with `module.` stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pth/.pt/.safetensors file")
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {error}; the file is truncated or not safetensors — "
                                  "download it again") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(f"refusing {path}: it carries pickled code or objects that weights_only "
                                  f"loading forbids ({str(error).splitlines()[0][:120]}); re-save it as a plain "
                                  "state dict or safetensors") from None
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {str(error).splitlines()[0][:160]}; the file is "
                                  "truncated or not a PyTorch checkpoint — download it again") from None
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (looked for {', '.join(WRAPPERS)} or a "
                              "plain mapping of names to tensors)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, meta


def load_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with one readable error on any mismatch."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(items):
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {few(shapes)}")
        raise CheckpointError(f"{source} does not fit {type(net).__name__}: " + "; ".join(parts)
                              + " — check that the checkpoint is for this model configuration")
    net.load_state_dict(state, strict=True)
