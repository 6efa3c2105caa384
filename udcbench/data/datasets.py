"""Datasets: `load_dataset(name_or_path, split="test", limit=None)`.

A dataset yields `Sample`s one at a time (large images stream): the degraded capture and its ground truth as
float32 tensors (3, H, W) in [0, 1], plus extras a model may need: `psf` (3, k, k), the effective blur kernel
(PSF × per-channel transmittance), and `psf_code` (5, 1, 1), the PSF's code for DISCNet-style conditioning. Registered names
(`udc-mini`) come first; anything else is read as a folder in the layout `ROOT/{split}/{input,gt}/NAME.png`
(or `ROOT/{input,gt}/NAME.png` without a split level), with matching file names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from udcbench.data.mini import BUNDLED_DIR
from udcbench.errors import DataError, UnknownNameError
from udcbench.registry import DATASETS, register_dataset

IMAGE_SUFFIXES = (".png",)


@dataclass
class Sample:
    name: str
    degraded: torch.Tensor  # (3, H, W) float32 in [0, 1]
    gt: torch.Tensor  # (3, H, W) float32 in [0, 1]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DatasetInfo:
    name: str
    root: str
    split: str
    value_range: tuple[float, float] = (0.0, 1.0)
    tone_mapping: str | None = None
    description: str = ""


def read_png(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as handle:
            array = np.asarray(handle.convert("RGB") if handle.mode != "RGB" else handle)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"cannot read image {path}: {error}; replace the corrupt file") from None
    if array.dtype != np.uint8:
        raise DataError(f"{path} is {array.dtype}; udcbench reads 8-bit RGB PNGs here — convert it")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class PairFolderDataset:
    """Matching file names in an input folder and a ground-truth folder."""

    def __init__(self, input_dir: Path, gt_dir: Path, info: DatasetInfo, limit: int | None = None,
                 extras: dict[str, torch.Tensor] | None = None):
        self.info = info
        self.extras = dict(extras or {})  # per-dataset inputs every sample carries (e.g. the PSF)
        inputs = {p.name: p for p in sorted(input_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        gts = {p.name: p for p in sorted(gt_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        only_in = sorted(set(inputs) ^ set(gts))
        if only_in:
            raise DataError(f"{len(only_in)} files have no partner between {input_dir} and {gt_dir} "
                            f"(e.g. {', '.join(only_in[:3])}); every input needs a ground truth of the same name")
        if not inputs:
            raise DataError(f"split {info.split!r} of {info.root} is empty: no .png files in {input_dir}")
        names = sorted(inputs)
        if limit is not None:
            if limit < 1:
                raise DataError(f"--limit must be at least 1, got {limit}")
            names = names[:limit]
        self._pairs = [(Path(n).stem, inputs[n], gts[n]) for n in names]

    def __len__(self) -> int:
        return len(self._pairs)

    def names(self) -> list[str]:
        return [name for name, _, _ in self._pairs]

    def __getitem__(self, index: int) -> Sample:
        name, input_path, gt_path = self._pairs[index]
        degraded, gt = read_png(input_path), read_png(gt_path)
        if degraded.shape != gt.shape:
            raise DataError(f"{name}: input {tuple(degraded.shape)} and ground truth {tuple(gt.shape)} differ in "
                            "size; pairs must be aligned")
        return Sample(name, degraded, gt, dict(self.extras))

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]


def _folder_dataset(root: Path, split: str, limit: int | None, name: str | None = None,
                    description: str = "") -> PairFolderDataset:
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; pass a registered name (`udcbench list "
                        "datasets`) or a folder holding input/ and gt/ (optionally under train/ and test/)")
    base = root / split if (root / split).is_dir() else root
    input_dir, gt_dir = base / "input", base / "gt"
    if not input_dir.is_dir() or not gt_dir.is_dir():
        raise DataError(f"{root} has no {split}/input and {split}/gt folders (nor input/ and gt/); "
                        "lay the pairs out as ROOT/SPLIT/input/NAME.png and ROOT/SPLIT/gt/NAME.png")
    info = DatasetInfo(name=name or str(root), root=str(root), split=split, description=description)
    return PairFolderDataset(input_dir, gt_dir, info, limit)


@register_dataset("udc-mini", bundled=True,
                  description="24 test pairs (128²) + 8 full-size train pairs: scikit-image photos through a "
                              "display-diffraction PSF, transmittance and light Poisson-Gaussian noise")
def udc_mini(split: str = "test", limit: int | None = None) -> PairFolderDataset:
    if split not in ("train", "test"):
        raise DataError(f"udc-mini has splits 'train' and 'test', not {split!r}")
    meta = json.loads((BUNDLED_DIR / "meta.json").read_text())
    dataset = _folder_dataset(BUNDLED_DIR, split, limit, name="udc-mini",
                              description=DATASETS.get("udc-mini").info["description"])
    dataset.info.value_range = tuple(meta["value_range"])
    transmittance = torch.tensor(meta["simulation"]["display"]["transmittance"], dtype=torch.float32)
    psf = torch.from_numpy(np.load(BUNDLED_DIR / "psf.npy")).float()
    dataset.extras = {
        # the effective blur of the capture: the PSF scaled by the display's per-channel transmittance
        "psf": psf * transmittance[:, None, None],
        "psf_code": torch.from_numpy(np.load(BUNDLED_DIR / "psf_code.npy")).float().view(-1, 1, 1),
    }
    return dataset


def load_dataset(name_or_path: str | Path, split: str = "test", limit: int | None = None) -> PairFolderDataset:
    """A registered dataset by name, or a folder of pairs by path."""
    text = str(name_or_path)
    if text in DATASETS.names():
        return DATASETS.get(text).factory(split=split, limit=limit)
    path = Path(text).expanduser()
    if path.exists() or "/" in text or text.startswith("."):
        return _folder_dataset(path, split, limit)
    try:
        DATASETS.get(text)
    except UnknownNameError as error:
        raise DataError(f"{error}; or pass the path of a folder of pairs") from None
    raise DataError(text)
