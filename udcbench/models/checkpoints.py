"""Reading checkpoints safely: nothing read from a file ever runs code.

The content, not the name, decides how a file is read: safetensors (an 8-byte little-endian header length, then
JSON) with safetensors; anything else with torch.load(weights_only=True) only, which refuses pickled code and
objects (the refusal names the global the file asks for, in one line, with torch's warnings silenced). A
safetensors file named .pth therefore loads, and a pickle named .safetensors is refused as a pickle.

Wrappings are unwrapped in the order params_ema > params > state_dict > plain; a DataParallel `module.`
prefix is stripped. Empty, truncated and garbage files, tensors holding NaN or Inf, and a mismatch (missing /
unexpected keys and shape mismatches, the first few of each) each raise one CheckpointError line.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from udcbench.errors import CheckpointError

WRAPPERS = ("params_ema", "params", "state_dict")
ZIP_MAGIC, PICKLE_PROTO = b"PK\x03\x04", b"\x80"  # torch.save's zip format; a legacy torch file or raw pickle


class PickledCodeError(CheckpointError):
    """A torch file that weights_only loading refuses: it carries pickled code or objects."""


def few(items: list[str]) -> str:
    """The first four of a list of keys, and how many more."""
    return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")


def is_safetensors(path: str | Path) -> bool:
    """Whether the file's content is safetensors: a header length that fits the file, then a JSON object."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def first_sentence(error: Exception) -> str:
    """The first sentence of an error message, in whole words (torch's run to paragraphs with ANSI codes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    first = re.split(r"(?<=\.)\s|\n", text)[0].strip() if text else type(error).__name__
    return first if len(first) <= 160 else first[:160].rsplit(" ", 1)[0] + " …"


def _refused(path: Path, error: Exception) -> PickledCodeError:
    """The refusal of a file weights_only loading rejects, naming what it asked for when torch says."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported class ([\w.]+)", text)
    opcode = re.search(r"Unsupported operand (\d+)", text)
    detail = f" (GLOBAL {found[1]})" if found else f" (pickle opcode {opcode[1]})" if opcode else ""
    return PickledCodeError(f"refusing {path}: it carries pickled code or objects that weights_only loading does not "
                            f"allow{detail}; udcbench never runs code from files — if you trust its source, re-save "
                            "its tensors with safetensors.torch.save_file(state_dict, 'NAME.safetensors')")


def load_file(path: str | Path, mmap: bool = False) -> tuple[object, dict[str, str]]:
    """(content, safetensors metadata) of a checkpoint file: a dict of tensors and its header's metadata for
    safetensors, whatever torch.load(weights_only=True) returns and {} for torch files. mmap: map a zip-format
    torch file instead of reading it (to check a file without holding a second copy)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pth/.pt/.safetensors file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); re-download or re-export it")
    with open(path, "rb") as handle:
        head = handle.read(8)
    torch_file = head.startswith((ZIP_MAGIC, PICKLE_PROTO))
    if is_safetensors(path) or (path.suffix == ".safetensors" and not torch_file):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: {first_sentence(error)}; the file is truncated or not "
                                  "safetensors — download it again") from None
    if not torch_file:
        raise CheckpointError(f"cannot read {path}: it is neither safetensors nor a PyTorch checkpoint (it starts "
                              f"with {head!r}); pass the checkpoint file itself, or download it again")
    with warnings.catch_warnings():  # torch warns (FutureWarning, UserWarning) on its way to a refusal
        warnings.simplefilter("ignore")
        try:
            if path.suffix == ".safetensors":  # a pickle so named: torch.load would hand the path to safetensors
                with open(path, "rb") as handle:
                    return torch.load(handle, map_location="cpu", weights_only=True), {}
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=mmap and head.startswith(ZIP_MAGIC)), {}
        except pickle.UnpicklingError as error:
            if "weights only" in str(error).lower() or "weights_only" in str(error):
                raise _refused(path, error) from None
            reason = error
        except Exception as error:  # zip, EOF, IO or storage errors: the file is damaged
            reason = error
    raise CheckpointError(f"cannot read {path}: {first_sentence(reason)}; the file is truncated or not a PyTorch "
                          "checkpoint — download it again")


def refuse_pickled_code(path: str | Path) -> None:
    """Raise the refusal if `path` is a torch file that carries pickled code; say nothing about any other file
    (for callers that then say in their own words why they want no torch file)."""
    try:
        load_file(path, mmap=True)
    except PickledCodeError:
        raise
    except CheckpointError:
        pass


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (tensors, metadata) from a checkpoint file, unwrapped and with `module.` stripped."""
    state, meta = load_file(path)
    for key in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors (looked for {', '.join(WRAPPERS)} or a "
                              "plain mapping of names to tensors)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, meta


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or ±Inf: a network with them outputs NaN, which a run would store as rows."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        count = sum(int((~torch.isfinite(state[key])).sum()) for key in bad)
        raise CheckpointError(f"{source} holds {count:,} non-finite values (NaN or Inf) in {len(bad)} tensors: "
                              f"{few(bad)}; the checkpoint is broken — re-download or re-export it")


def load_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True) with one readable error on any mismatch or non-finite value."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(items)} {kind}: {few(items)}" for kind, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
        raise CheckpointError(f"{source} does not fit {type(net).__name__}: " + "; ".join(parts)
                              + " — check that the checkpoint is for this model configuration")
    check_finite(state, source)
    net.load_state_dict(state, strict=True)
