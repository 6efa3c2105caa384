"""Distilled surrogate files (written by `udcbench distill`, udcbench.models.distill): reading them back as
ready models, telling them apart from every other udcbench .safetensors file, and writing them byte-stably.

A surrogate file is safetensors whose header metadata has kind="udcbench-surrogate" and names its architecture
(`arch`, a model spec `load_model` builds); everything else in the header describes the distillation (see
udcbench.models.distill). Users of a surrogate file — the transfer attack (surrogate=FILE) and the smooth
defense (smooth:surrogate=FILE) — call `load_surrogate`, whose errors say what the file is instead (a torch file
carrying pickled code is refused as such, whatever its name; safetensors under another name is told to be renamed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from udcbench.errors import SpecError, UdcbenchError

KIND = "udcbench-surrogate"
SURROGATE_FILE = "surrogate-uformer-nano.safetensors"  # the bundled one, in udcbench/models/weights/
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


def bundled_surrogate() -> Path:
    """Where the bundled distilled surrogate lives (udcbench/models/weights/)."""
    from udcbench.models import WEIGHTS_DIR

    return WEIGHTS_DIR / SURROGATE_FILE


def is_surrogate_path(text) -> bool:
    """Whether a `surrogate=` value names a file rather than a model: a checkpoint suffix or a path separator."""
    text = str(text)
    return text.lower().endswith(CHECKPOINT_SUFFIXES) or "/" in text or os.sep in text


def _not_surrogate(path: Path, what: str) -> SpecError:
    return SpecError(f"{path} is {what}, not a distilled surrogate; pass a file written by `udcbench distill "
                     f"--out S.safetensors` (bundled: {bundled_surrogate()})")


def _read_header(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    from udcbench.models.checkpoints import first_sentence, is_safetensors, refuse_pickled_code

    if not path.exists():
        raise SpecError(f"surrogate file {path} does not exist; pass a file written by `udcbench distill` "
                        f"(bundled: {bundled_surrogate()})")
    if path.is_dir():
        raise _not_surrogate(path, "a folder")
    if not is_safetensors(path):
        refuse_pickled_code(path)  # whatever its name, a torch file carrying code is refused as such
    elif path.suffix != ".safetensors":
        raise SpecError(f"{path} is a safetensors file named {path.suffix or 'without .safetensors'}; rename it to "
                        f"{path.stem}.safetensors")
    if path.suffix != ".safetensors":
        raise _not_surrogate(path, f"a {path.suffix or 'suffix-less'} file (a surrogate is a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise _not_surrogate(path, f"not readable as safetensors ({first_sentence(error)})") from None


def surrogate_info(path: str | Path) -> dict[str, str]:
    """The header of a distilled surrogate (arch, target, queries, fidelity_psnr, ...); a one-line SpecError,
    saying what the file is instead, for anything else (model weights, a prior, a guide, a missing file)."""
    path = Path(path)
    header = _read_header(path)
    if header.get("kind") == KIND:
        if not header.get("arch"):
            raise SpecError(f"{path} is a damaged udcbench surrogate (its header names no arch); distill it again")
        return header
    found = header.get("format", "")
    if found.startswith("udcbench-diffusion-prior"):
        raise _not_surrogate(path, "a udcbench diffusion prior (use it as purify:prior=FILE)")
    if found.startswith("udcbench-guide"):
        raise _not_surrogate(path, "a udcbench guide network (use it as purify:guide=adv:FILE)")
    if found or header.get("kind"):
        raise _not_surrogate(path, f"a {found or header.get('kind')} file")
    model = header.get("model")
    if model:
        raise _not_surrogate(path, f"a plain model checkpoint ({model} weights; load them as that model's "
                                   f"weights, e.g. transfer surrogate={model} surrogate_weights=FILE)")
    raise _not_surrogate(path, "a safetensors file without a udcbench surrogate header (plain weights?)")


def load_surrogate(path: str | Path, device: str | torch.device = "cpu"):
    """A distilled surrogate as a ready RestorationModel: the header's arch built, the weights loaded, eval mode,
    frozen. `info.extra["surrogate"]` holds the header; `info.weights` is the file's path (hashed by digest)."""
    from udcbench.models import load_model

    header = surrogate_info(path)
    try:
        model = load_model(header["arch"], weights=str(path), device=device)
    except UdcbenchError as error:
        raise SpecError(f"surrogate {path} does not load as its arch {header['arch']} ({error})") from None
    model.info.extra["surrogate"] = header
    return model


def save_canonical(state: dict[str, torch.Tensor], out: str | Path, metadata: dict[str, str]) -> None:
    """Write safetensors with the header's metadata in sorted order, atomically (a temporary file renamed).
    safetensors itself writes the metadata in hash-map order, which changes from call to call; sorting it makes
    the same tensors and metadata the same bytes."""
    from safetensors.torch import save

    out = Path(out)
    blob = save({key: value.detach().contiguous().cpu() for key, value in state.items()}, metadata=metadata)
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes with spaces
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + length:])
    tmp.chmod(0o644)
    tmp.replace(out)
