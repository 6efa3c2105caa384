"""Datasets: `load_dataset(spec, split="test", limit=None)`.

A dataset yields `Sample`s one at a time (large images stream): the degraded capture and its ground truth as
float32 tensors (3, H, W) in [0, 1], plus extras a model may need: `psf` (3, k, k), the effective blur kernel
(PSF × per-channel transmittance), and `psf_code` (5, 1, 1), the PSF's code for DISCNet-style conditioning.

The spec is one of
- a registered name (`udc-mini`; `udcbench list datasets`);
- `FORMAT:ROOT[#OPTIONS]`, a dataset in an official layout (FORMAT in synth, toled, poled, mipi, pairs; see
  `udcbench.data.formats`); OPTIONS are `key=value` (or a bare `key`) joined by `&`, e.g.
  `synth:/d/synthetic_data#psf=1,2`;
- a folder of pairs, `ROOT/{split}/{input,gt}/NAME.png` (or `ROOT/{input,gt}/NAME.png` without a split level)
  with matching file names: the same as `pairs:ROOT`.

Every check (layout, pairing, headers, sizes, dtypes, corrupt files, and the pixel data: each image file is
decoded once, ~15 ms per 800×800 PNG, in threads) happens while the dataset is built, so a bad dataset fails
before a run writes anything (the .mat arrays of toled/poled are checked from their headers only).
`info.identity` names the data in a run's hash: the registered name, the resolved folder of a bare path, or
`FORMAT:/resolved/root[#canonical options]`.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from udcbench.data.mini import BUNDLED_DIR
from udcbench.data.readers import (HDR_RANGE, IMAGE_SUFFIXES, ImageHeader, check_pixels, inspect_image, read_code,
                                   read_image, read_png, read_psf)
from udcbench.data.tonemap import TONE_MAP
from udcbench.errors import DataError, UnknownNameError
from udcbench.registry import DATASETS, register_dataset

__all__ = ["DatasetInfo", "Sample", "load_dataset", "read_png"]

FORMAT_SPEC = re.compile(r"^([A-Za-z][\w-]*):(.*)$", re.S)


@dataclass
class Sample:
    name: str
    degraded: torch.Tensor  # (3, H, W) float32 in [0, 1]
    gt: torch.Tensor  # (3, H, W) float32 in [0, 1]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    value_range: tuple = (0.0, 1.0)  # the source's range: (0, 500) for linear HDR
    tone_mapping: str | None = None  # "x/(x+0.25)" when the [0,1] tensors are tone-mapped HDR


@dataclass
class DatasetInfo:
    name: str
    root: str
    split: str
    value_range: tuple[float, float] = (0.0, 1.0)
    tone_mapping: str | None = None
    description: str = ""
    identity: str = ""  # what the run hash records for the data (see the module docstring)


class Dataset:
    """A sized, indexable sequence of Samples; subclasses implement `names()` and `read(index)`."""

    info: DatasetInfo

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names())

    def image_sizes(self) -> set[tuple[int, int]]:
        """The (H, W) sizes of the images, for checks before a run (file datasets read them from headers; the
        default decodes only the first sample)."""
        return {tuple(self[0].degraded.shape[-2:])} if len(self) else set()

    def __getitem__(self, index: int) -> Sample:
        names = self.names()
        if not -len(names) <= index < len(names):
            raise IndexError(f"sample {index} of a dataset of {len(names)}")
        index %= len(names)
        degraded, gt, extras = self.read(index)
        if degraded.shape != gt.shape:
            raise DataError(f"{names[index]}: input {tuple(degraded.shape)} and ground truth {tuple(gt.shape)} "
                            "differ in size; pairs must be aligned")
        return Sample(names[index], degraded, gt, extras, tuple(self.info.value_range), self.info.tone_mapping)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]


@dataclass
class PairRef:
    """One sample of a file dataset: its checked input and ground-truth files and its per-sample extra files."""

    name: str
    degraded: ImageHeader
    gt: ImageHeader
    extra_files: dict[str, Path] = field(default_factory=dict)  # "psf" / "psf_code" -> .npy


EXTRA_READERS = {"psf": read_psf, "psf_code": read_code}


class FileDataset(Dataset):
    """Pairs of image files, each decoded when its sample is read; extras shared by every sample (`extras`)
    or read from per-sample files (cached, since many samples share one PSF)."""

    def __init__(self, info: DatasetInfo, pairs: list[PairRef], extras: dict[str, torch.Tensor] | None = None):
        self.info = info
        self.pairs = pairs
        self.extras = dict(extras or {})  # per-dataset inputs every sample carries (e.g. the PSF)
        self._extra_cache: dict[Path, torch.Tensor] = {}

    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def image_sizes(self) -> set[tuple[int, int]]:
        return {(pair.degraded.height, pair.degraded.width) for pair in self.pairs}

    def read(self, index: int):
        pair = self.pairs[index]
        hdr = self.info.tone_mapping == TONE_MAP
        extras = dict(self.extras)
        for key, path in pair.extra_files.items():
            if path not in self._extra_cache:
                self._extra_cache[path] = EXTRA_READERS[key](path)
            extras[key] = self._extra_cache[path]
        return read_image(pair.degraded, hdr), read_image(pair.gt, hdr), extras


# ---- helpers shared by the formats --------------------------------------------------------------------------

def take(items: list, limit: int | None) -> list:
    """The first `limit` items (all when limit is None)."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}; e.g. --limit 8, or leave it out for every image")
    return items if limit is None else items[:limit]


def require_dir(path: Path, what: str, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist; expected layout: {layout}")


def list_images(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """{file name: path} of the image files in a folder, sorted by name; names must be unique without suffix."""
    files = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes and p.is_file()}
    stems: dict[str, str] = {}
    for name in files:
        stem = Path(name).stem
        if stem in stems:
            raise DataError(f"{folder} holds both {stems[stem]} and {name}; sample names must be unique — "
                            "keep one of them")
        stems[stem] = name
    return files


def match_names(input_dir: Path, inputs: dict, gt_dir: Path, gts: dict) -> list[str]:
    """The sorted file names present in both folders; any name without a partner is an error."""
    only_inputs, only_gts = sorted(set(inputs) - set(gts)), sorted(set(gts) - set(inputs))
    if only_inputs or only_gts:
        sides = []
        if only_inputs:
            sides.append(f"{len(only_inputs)} in {input_dir} without a ground truth ({', '.join(only_inputs[:3])}"
                         f"{', ...' if len(only_inputs) > 3 else ''})")
        if only_gts:
            sides.append(f"{len(only_gts)} in {gt_dir} without an input ({', '.join(only_gts[:3])}"
                         f"{', ...' if len(only_gts) > 3 else ''})")
        raise DataError(f"{len(only_inputs) + len(only_gts)} files have no partner: {'; '.join(sides)}; every "
                        "input needs a ground truth of the same name")
    return sorted(inputs)


def check_one_kind(files: list[Path], label: str) -> None:
    """A dataset read with HDR auto-detection must not mix .npy and .png files (checked on names only)."""
    by_suffix = {p.suffix.lower(): p for p in files}
    if len(by_suffix) > 1:
        examples = " with ".join(f"{p.suffix} files ({p.name})" for p in by_suffix.values())
        raise DataError(f"{label} mixes {examples}; a dataset must be all one kind (float HDR .npy or 8-bit) — "
                        "convert them")


def inspect_pairs(entries: list[tuple[str, Path, Path, dict[str, Path]]], hdr: bool | None,
                  label: str) -> tuple[list[PairRef], bool]:
    """Check the files of (name, input, gt, extra files) entries from their headers. hdr=None: float .npy files
    are linear HDR and 8-bit files SDR, and a dataset must not mix them; True: every file must be float HDR;
    False: float files are [0,1] images. Returns the pairs and whether the dataset is HDR."""
    headers: dict[Path, ImageHeader] = {}
    pairs = []
    for name, input_path, gt_path, extra_files in entries:
        for path in (input_path, gt_path):
            if path not in headers:
                headers[path] = inspect_image(path)
        degraded, gt = headers[input_path], headers[gt_path]
        if degraded.size != gt.size:
            raise DataError(f"{name}: input {input_path.name} is {degraded.height}×{degraded.width} but ground truth "
                            f"{gt_path} is {gt.height}×{gt.width}; pairs must be aligned images of one size")
        pairs.append(PairRef(name, degraded, gt, extra_files))
    floats = [h for h in headers.values() if h.is_float]
    eight_bit = [h for h in headers.values() if not h.is_float]
    if hdr is None:
        if floats and eight_bit:
            raise DataError(f"{label} mixes float HDR .npy files ({floats[0].path.name}) with 8-bit files "
                            f"({eight_bit[0].path.name}); a dataset must be all one kind (float HDR .npy or "
                            "8-bit) — convert them")
        hdr = bool(floats)
    elif hdr and eight_bit:
        raise DataError(f"{label} was given #hdr, but {eight_bit[0].path} is 8-bit; #hdr needs float .npy files "
                        "of linear radiance — drop #hdr or convert the file")
    check_all_pixels(list(headers.values()), hdr)
    return pairs, hdr


PIXEL_THREADS = 8  # threads that decode images for check_all_pixels, at most


def check_all_pixels(headers: list[ImageHeader], hdr: bool) -> None:
    """Decode every image once (readers.check_pixels), so that corrupt pixel data fails here and not after a run
    has stored its first rows; the first bad file in order is reported."""
    workers = min(PIXEL_THREADS, os.cpu_count() or 1, len(headers))
    if workers <= 1:
        for header in headers:
            check_pixels(header, hdr)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="udcbench-check") as pool:
        results = [pool.submit(check_pixels, header, hdr) for header in headers]
        try:
            for result in results:
                result.result()
        except BaseException:
            for result in results:
                result.cancel()
            raise


def hdr_info(info: DatasetInfo, hdr: bool) -> DatasetInfo:
    if hdr:
        info.value_range, info.tone_mapping = HDR_RANGE, TONE_MAP
    return info


def canonical_options(options: dict[str, str]) -> str:
    return "&".join(key if value == "" else f"{key}={value}" for key, value in sorted(options.items()))


def format_identity(fmt: str, root: Path | str, options: dict[str, str] | None = None) -> str:
    """`FORMAT:/resolved/root[#canonical options]`, what the run hash records for a prefixed spec."""
    text = f"{fmt}:{Path(root).expanduser().resolve()}"
    return f"{text}#{canonical_options(options)}" if options else text


def folder_pairs(root: Path, split: str, limit: int | None, name: str | None = None, description: str = "",
                 hdr: bool = False) -> FileDataset:
    """The folder layout ROOT/[SPLIT/]{input,gt}/NAME.{png,npy}."""
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; pass a registered name (`udcbench list "
                        "datasets`), FORMAT:ROOT, or a folder holding input/ and gt/ (optionally under train/ and "
                        "test/)")
    base = root / split if (root / split).is_dir() else root
    input_dir, gt_dir = base / "input", base / "gt"
    if not input_dir.is_dir() or not gt_dir.is_dir():
        splits = sorted(p.name for p in root.iterdir() if (p / "input").is_dir() and (p / "gt").is_dir())
        found = f" (splits found: {', '.join(splits)}; pass one with --split)" if splits else ""
        raise DataError(f"{root} has no {split}/input and {split}/gt folders (nor input/ and gt/){found}; "
                        "lay the pairs out as ROOT/SPLIT/input/NAME.png and ROOT/SPLIT/gt/NAME.png")
    return paired_folders(input_dir, gt_dir, DatasetInfo(name=name or str(root), root=str(root), split=split,
                                                         description=description), limit, hdr)


def paired_folders(input_dir: Path, gt_dir: Path, info: DatasetInfo, limit: int | None, hdr: bool | None,
                   extra_files: dict[str, Path] | None = None) -> FileDataset:
    """Matching file names in an input folder and a ground-truth folder."""
    names = match_names(input_dir, list_images(input_dir), gt_dir, list_images(gt_dir))
    if not names:
        raise DataError(f"split {info.split!r} of {info.root} is empty: no .png or .npy files in {input_dir}")
    if hdr is None:
        check_one_kind([input_dir / n for n in names], info.name)
    entries = [(Path(n).stem, input_dir / n, gt_dir / n, dict(extra_files or {})) for n in take(names, limit)]
    pairs, is_hdr = inspect_pairs(entries, hdr, info.name)
    return FileDataset(hdr_info(info, is_hdr), pairs)


# ---- the bundled set and the entry point ---------------------------------------------------------------------

@register_dataset("udc-mini", bundled=True,
                  description="24 test pairs (128²) + 8 full-size train pairs: scikit-image photos through a "
                              "display-diffraction PSF, transmittance and light Poisson-Gaussian noise")
def udc_mini(split: str = "test", limit: int | None = None) -> FileDataset:
    if split not in ("train", "test"):
        raise DataError(f"udc-mini has splits 'train' and 'test', not {split!r}")
    meta = json.loads((BUNDLED_DIR / "meta.json").read_text())
    dataset = folder_pairs(BUNDLED_DIR, split, limit, name="udc-mini",
                           description=DATASETS.get("udc-mini").info["description"])
    dataset.info.value_range = tuple(meta["value_range"])
    dataset.info.identity = "udc-mini"
    transmittance = torch.tensor(meta["simulation"]["display"]["transmittance"], dtype=torch.float32)
    psf = read_psf(BUNDLED_DIR / "psf.npy")  # bundled (3, 63, 63), each channel summing to 1; read by shape
    dataset.extras = {
        # the effective blur of the capture: the PSF scaled by the display's per-channel transmittance
        "psf": psf * transmittance[:, None, None],
        "psf_code": torch.from_numpy(np.load(BUNDLED_DIR / "psf_code.npy")).float().view(-1, 1, 1),
    }
    return dataset


def formats() -> list[str]:
    return [entry.name for entry in DATASETS.entries() if entry.info.get("format")]


def parse_options(fmt: str, text: str) -> dict[str, str]:
    """`key=value&flag` -> {key: value, flag: ""}, checked against the format's declared options."""
    known = DATASETS.get(fmt).info.get("options", {})
    options: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in known:
            listing = "; ".join(f"{k}: {v}" for k, v in known.items()) or "none"
            raise DataError(f"{fmt} has no option {key!r}; its options are {listing}")
        options[key] = value.strip()
    return options


def load_dataset(spec: str | Path, split: str = "test", limit: int | None = None) -> Dataset:
    """A registered dataset by name, `FORMAT:ROOT[#OPTIONS]`, or a folder of pairs by path."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}; e.g. --limit 8, or leave it out for every image")
    text = str(spec)
    if text in DATASETS.names() and not DATASETS.get(text).info.get("format"):
        dataset = DATASETS.get(text).factory(split=split, limit=limit)
        dataset.info.identity = dataset.info.identity or text
        return dataset
    if text in formats():
        entry = DATASETS.get(text)
        raise DataError(f"{text} is a dataset format and needs a folder: pass {text}:ROOT, with ROOT laid out as "
                        f"{entry.info.get('layout', '(see `udcbench list datasets`)')}")
    match = FORMAT_SPEC.match(text)
    path = Path(text).expanduser()
    if match and match.group(1) in formats():
        fmt, rest = match.groups()
        root, _, option_text = rest.partition("#")
        if not root.strip():
            raise DataError(f"{text!r} names no folder; write {fmt}:ROOT, e.g. {fmt}:/data/{fmt}")
        options = parse_options(fmt, option_text)
        dataset = DATASETS.get(fmt).factory(root.strip(), split, limit, options)
        dataset.info.name = text
        dataset.info.identity = dataset.info.identity or format_identity(fmt, root.strip(), options)
        return dataset
    if match and len(match.group(1)) > 1 and not path.exists():
        raise DataError(f"unknown dataset format {match.group(1)!r} in {text!r}; formats: {', '.join(formats())} "
                        "(FORMAT:ROOT[#OPTIONS], see `udcbench list datasets`)")
    if path.exists() or "/" in text or text.startswith("."):
        dataset = folder_pairs(path, split, limit)
        dataset.info.identity = str(path.resolve())
        return dataset
    try:
        DATASETS.get(text)
    except UnknownNameError as error:
        raise DataError(f"{error}; or pass FORMAT:ROOT or the path of a folder of pairs") from None
    raise DataError(text)
