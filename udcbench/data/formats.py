"""Official dataset layouts, loaded with `load_dataset("FORMAT:ROOT[#OPTIONS]")` or `--data FORMAT:ROOT`.

- `synth:ROOT` — DISCNet SYNTH (Feng et al., CVPR 2021): `ROOT/GT/{train,test}/NAME.npy` (float32 HWC linear
  HDR), inputs `ROOT/input/FAMILY_K/{train,test}/NAME.npy` per PSF index K (official FAMILY `ZTE_new`, K 1..9),
  PSFs `ROOT/PSF/FAMILY/FAMILY_psf_K.npy` (h, w, 3) and kernel codes `ROOT/PSF/kernel_code/FAMILY_code_K.npy`
  (5,). Samples `NAME_psfK`, ordered by K then name; `#psf=3` or `#psf=1,2` selects PSFs, `#family=NAME` picks
  a family when input/ holds several. `.png` files in the same layout are read as 8-bit SDR (what
  `udcbench synth` writes); one dataset is all .npy HDR or all 8-bit.
- `toled:ROOT`, `poled:ROOT` — ECCV 2020 UDC challenge: splits val/test from `ROOT/toled_{val,test}_display.mat`
  and `..._gt.mat` (keys `{val,test}_{display,gt}`, uint8 (N, H, W, 3)), samples `{split}_{i:03d}` (i from 0);
  split train from `ROOT/Train/Toled/{LQ,HQ}/N.png` (or `ROOT/{LQ,HQ}`). A .mat array is read whole on the
  first sample and held in memory (about 190 MB per official file, two per split); MATLAB v7.3 files need
  h5py, which reads them image by image.
- `mipi:ROOT` — MIPI 2022 UDC: `ROOT/{training,validation,test}/{input,GT}/NAME.npy` (linear HDR in [0, 500],
  or .png), `--split train|val|test` (or the folder names); optional `ROOT/psf.npy` (h, w, 3) and
  `ROOT/psf_code.npy` (5,) become every sample's extras.
- `pairs:ROOT` — `ROOT/[SPLIT/]{input,gt}/NAME.{png,npy}`; `pairs:INPUT_DIR,GT_DIR` — two folders (no split
  level). uint8 files are divided by 255; float files must lie in [0, 1], or hold linear HDR with `#hdr`.

HDR files are tone-mapped u = x/(x+0.25) (negatives clipped to 0): samples carry value_range (0, 500) and
tone_mapping "x/(x+0.25)". Images are read one sample at a time, except the .mat arrays above.
"""

from __future__ import annotations

import re
from pathlib import Path

from udcbench.data.datasets import (Dataset, DatasetInfo, FileDataset, canonical_options, check_one_kind,
                                    folder_pairs, format_identity, hdr_info, inspect_pairs, list_images,
                                    match_names, paired_folders, require_dir, take)
from udcbench.data.readers import inspect_code, inspect_psf, load_mat_array, mat_variables, to_tensor
from udcbench.errors import DataError
from udcbench.registry import register_dataset

SYNTH_LAYOUT = ("ROOT/GT/{train,test}/NAME.npy and ROOT/input/FAMILY_K/{train,test}/NAME.npy (DISCNet: FAMILY "
                "ZTE_new, K 1..9), optional ROOT/PSF/FAMILY/FAMILY_psf_K.npy and "
                "ROOT/PSF/kernel_code/FAMILY_code_K.npy; .png instead of .npy for 8-bit sets")
MIPI_LAYOUT = ("ROOT/{training,validation,test}/{input,GT}/NAME.npy (HDR in [0,500], or .png), optional "
               "ROOT/psf.npy (h, w, 3) and ROOT/psf_code.npy (5,)")
PAIRS_LAYOUT = "ROOT/[SPLIT/]{input,gt}/NAME.{png,npy}, or pairs:INPUT_DIR,GT_DIR"
MIPI_SPLITS = {"train": "training", "val": "validation", "test": "test"}


def eccv_layout(display: str) -> str:
    return (f"ROOT/{display}_{{val,test}}_{{display,gt}}.mat (keys {{val,test}}_{{display,gt}}, uint8 (N, H, W, "
            f"3)) and ROOT/Train/{display.capitalize()}/{{LQ,HQ}}/N.png")


# ---- synth ---------------------------------------------------------------------------------------------------

def _psf_indices(text: str | None, available: dict[int, Path], where: Path, family: str) -> list[int]:
    if text is None:
        return sorted(available)
    try:
        indices = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise DataError(f"#psf takes PSF indices like psf=3 or psf=1,2, not {text!r}") from None
    missing = [k for k in indices if k not in available]
    if missing:
        raise DataError(f"no PSF {', '.join(map(str, missing))} in {where}: {family} has PSFs "
                        f"{', '.join(map(str, sorted(available)))}; pick from those with #psf=")
    return indices


@register_dataset("synth", format=True, layout=SYNTH_LAYOUT,
                  options={"psf": "PSF indices, e.g. psf=3 or psf=1,2 (default: all)",
                           "family": "the PSF family when input/ holds several (official: ZTE_new)"},
                  description="DISCNet SYNTH (CVPR 2021): HDR photos blurred by 9 measured PSFs, samples NAME_psfK "
                              "with psf and psf_code; splits train, test; tone-mapped x/(x+0.25) (8-bit .png sets "
                              "from `udcbench synth` too); options #psf=3 or #psf=1,2, #family=NAME")
def synth(root: str, split: str = "test", limit: int | None = None, options: dict | None = None) -> Dataset:
    options = dict(options or {})
    root_path = Path(root).expanduser()
    require_dir(root_path, "synth dataset folder", SYNTH_LAYOUT)
    if split not in ("train", "test"):
        raise DataError(f"synth has splits train and test, not {split!r}; pass --split train or --split test")
    gt_dir, input_root = root_path / "GT" / split, root_path / "input"
    require_dir(gt_dir, "ground-truth folder", SYNTH_LAYOUT)
    require_dir(input_root, "input folder", SYNTH_LAYOUT)
    families: dict[str, dict[int, Path]] = {}
    for folder in sorted(input_root.iterdir()):
        match = re.fullmatch(r"(.+)_(\d+)", folder.name)
        if match and folder.is_dir():
            families.setdefault(match[1], {})[int(match[2])] = folder
    if not families:
        raise DataError(f"{input_root} has no FAMILY_K folders (e.g. ZTE_new_1); expected layout: {SYNTH_LAYOUT}")
    family = options.get("family")
    if family is None:
        if len(families) > 1:
            raise DataError(f"{input_root} holds several PSF families ({', '.join(families)}); pick one with "
                            f"#family=NAME, e.g. synth:{root}#family={next(iter(families))}")
        family = next(iter(families))
    elif family not in families:
        raise DataError(f"no PSF family {family!r} in {input_root}; found {', '.join(families)}")
    indices = _psf_indices(options.get("psf"), families[family], input_root, family)
    gts = list_images(gt_dir)
    if not gts:
        raise DataError(f"split {split!r} of synth:{root} is empty: no .npy or .png files in {gt_dir}")
    entries = []
    for k in indices:
        input_dir = families[family][k] / split
        require_dir(input_dir, f"input folder of PSF {k}", SYNTH_LAYOUT)
        names = match_names(input_dir, list_images(input_dir), gt_dir, gts)
        extra_files = {"psf": root_path / "PSF" / family / f"{family}_psf_{k}.npy",
                       "psf_code": root_path / "PSF" / "kernel_code" / f"{family}_code_{k}.npy"}
        extra_files = {key: path for key, path in extra_files.items() if path.is_file()}
        entries += [(f"{Path(n).stem}_psf{k}", input_dir / n, gt_dir / n, extra_files) for n in names]
    check_one_kind(list(gts.values()) + [path for _, path, _, _ in entries], f"synth:{root}")
    entries = take(entries, limit)
    for path in {path for *_, extra_files in entries for path in extra_files.values()}:
        (inspect_code if path.parent.name == "kernel_code" else inspect_psf)(path)
    pairs, hdr = inspect_pairs(entries, None, f"synth:{root}")
    canonical = {key: value for key, value in (("family", family), ("psf", ",".join(map(str, indices))))
                 if key in options}
    info = DatasetInfo(name=f"synth:{root}", root=str(root_path), split=split,
                       identity=format_identity("synth", root_path, canonical))
    return FileDataset(hdr_info(info, hdr), pairs)


# ---- ECCV 2020 T-OLED / P-OLED ---------------------------------------------------------------------------------

class MatDataset(Dataset):
    """Display/ground-truth image stacks in two .mat files; each array is loaded whole on the first sample
    (v5/v7 files; ~190 MB per official file stays in memory) or read image by image through h5py (v7.3)."""

    def __init__(self, info: DatasetInfo, files: dict[str, tuple[Path, str]], count: int, hdf5: dict[str, bool]):
        self.info = info
        self.files, self.hdf5 = files, hdf5
        self._names = [f"{info.split}_{i:03d}" for i in range(count)]
        self._arrays: dict[str, object] = {}

    def names(self) -> list[str]:
        return list(self._names)

    def read(self, index: int):
        images = []
        for part in ("display", "gt"):
            path, key = self.files[part]
            if part not in self._arrays:
                self._arrays[part] = load_mat_array(path, key, self.hdf5[part])
            images.append(to_tensor(self._arrays[part][index], f"{path} ({key}[{index}])", hdr=False))
        return images[0], images[1], {}


def _check_mat(path: Path, key: str) -> tuple[tuple[int, ...], bool]:
    variables, hdf5 = mat_variables(path)
    if key not in variables:
        found = ", ".join(f"{name} {shape} {cls}" for name, (shape, cls) in variables.items()) or "no variables"
        raise DataError(f"{path} has no variable {key!r} (found: {found}); the ECCV 2020 files store {key} as "
                        "uint8 (N, H, W, 3) — re-save the array under that name")
    shape, cls = variables[key]
    if cls != "uint8" or len(shape) != 4 or shape[3] != 3:
        raise DataError(f"{path}: {key} is {cls} {shape}; expected uint8 (N, H, W, 3) images as in the ECCV 2020 "
                        "files — convert it")
    return shape, hdf5


def _eccv(display: str, root: str, split: str, limit: int | None) -> Dataset:
    root_path, layout = Path(root).expanduser(), eccv_layout(display)
    require_dir(root_path, f"{display} dataset folder", layout)
    info = DatasetInfo(name=f"{display}:{root}", root=str(root_path), split=split)
    if split == "train":
        base = root_path / "Train" / display.capitalize()
        if not base.is_dir() and (root_path / "LQ").is_dir():
            base = root_path
        if not (base / "LQ").is_dir() or not (base / "HQ").is_dir():
            raise DataError(f"{display}:{root} has no Train/{display.capitalize()}/LQ and HQ folders (nor LQ/ "
                            f"and HQ/); expected layout: {layout}")
        return paired_folders(base / "LQ", base / "HQ", info, limit, hdr=False)
    if split not in ("val", "test"):
        raise DataError(f"{display} has splits train, val and test, not {split!r}; pass one with --split")
    files = {part: (root_path / f"{display}_{split}_{part}.mat", f"{split}_{part}") for part in ("display", "gt")}
    missing = [path.name for path, _ in files.values() if not path.is_file()]
    if missing:
        present = sorted(p.name for p in root_path.glob(f"{display}_*.mat"))
        complete = [s for s in ("val", "test")
                    if all((root_path / f"{display}_{s}_{part}.mat").is_file() for part in ("display", "gt"))]
        hint = f"; pass --split {' or --split '.join(complete)}" if complete else ""
        found = ", ".join(present) or f"no {display}_*.mat files"
        raise DataError(f"{root_path} has no {' or '.join(missing)} (found: {found}){hint}; expected layout: "
                        f"{layout}")
    checked = {part: _check_mat(path, key) for part, (path, key) in files.items()}
    (display_shape, _), (gt_shape, _) = checked["display"], checked["gt"]
    if display_shape != gt_shape:
        raise DataError(f"{files['display'][0].name} holds {display_shape} but {files['gt'][0].name} holds "
                        f"{gt_shape}; display images and ground truths must match one to one in count and size")
    if display_shape[0] == 0:
        raise DataError(f"split {split!r} of {display}:{root} is empty: {files['display'][0]} holds no images")
    count = len(take(list(range(display_shape[0])), limit))
    return MatDataset(info, files, count, {part: hdf5 for part, (_, hdf5) in checked.items()})


ECCV_DESCRIPTION = ("ECCV 2020 UDC challenge, {} (30 val / 30 test pairs from .mat, 240 train "
                    "pairs as PNG; 1024×2048, 8-bit); splits train, val, test")


@register_dataset("toled", format=True, layout=eccv_layout("toled"), options={},
                  description=ECCV_DESCRIPTION.format("transparent OLED"))
def toled(root: str, split: str = "test", limit: int | None = None, options: dict | None = None) -> Dataset:
    return _eccv("toled", root, split, limit)


@register_dataset("poled", format=True, layout=eccv_layout("poled"), options={},
                  description=ECCV_DESCRIPTION.format("pentile OLED"))
def poled(root: str, split: str = "test", limit: int | None = None, options: dict | None = None) -> Dataset:
    return _eccv("poled", root, split, limit)


# ---- MIPI 2022 ---------------------------------------------------------------------------------------------------

@register_dataset("mipi", format=True, layout=MIPI_LAYOUT, options={},
                  description="MIPI 2022 UDC challenge: HDR .npy in [0,500] (2016 train / 40 "
                              "val / 40 test); splits train, val, test; tone-mapped x/(x+0.25)")
def mipi(root: str, split: str = "test", limit: int | None = None, options: dict | None = None) -> Dataset:
    root_path = Path(root).expanduser()
    require_dir(root_path, "mipi dataset folder", MIPI_LAYOUT)
    folder = MIPI_SPLITS.get(split, split if split in MIPI_SPLITS.values() else None)
    if folder is None:
        raise DataError(f"mipi has splits train, val and test (folders training, validation, test), not "
                        f"{split!r}; pass one with --split")
    split_dir = root_path / folder
    require_dir(split_dir, f"{split} folder", MIPI_LAYOUT)
    gt_dir = next((split_dir / n for n in ("GT", "gt") if (split_dir / n).is_dir()), split_dir / "GT")
    require_dir(split_dir / "input", "input folder", MIPI_LAYOUT)
    require_dir(gt_dir, "ground-truth folder", MIPI_LAYOUT)
    extra_files = {key: root_path / name for key, name in (("psf", "psf.npy"), ("psf_code", "psf_code.npy"))
                   if (root_path / name).is_file()}
    for key, path in extra_files.items():
        (inspect_psf if key == "psf" else inspect_code)(path)
    info = DatasetInfo(name=f"mipi:{root}", root=str(root_path), split=split)
    return paired_folders(split_dir / "input", gt_dir, info, limit, hdr=None, extra_files=extra_files)


# ---- any two folders ---------------------------------------------------------------------------------------------

def _flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() in ("", "1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise DataError(f"#{name} is a flag: write #{name} (or {name}=true / {name}=false), not {name}={value!r}")


@register_dataset("pairs", format=True, layout=PAIRS_LAYOUT,
                  options={"hdr": "float .npy files hold linear HDR: tone-map them with x/(x+0.25)"},
                  description="matching file names in input/ and gt/ (.png 8-bit, .npy uint8 or [0,1] float; "
                              "#hdr: linear HDR, tone-mapped); a bare folder path means the same")
def pairs(root: str, split: str = "test", limit: int | None = None, options: dict | None = None) -> Dataset:
    hdr = _flag("hdr", (options or {}).get("hdr"))
    canonical = canonical_options({"hdr": ""} if hdr else {})
    path = Path(root).expanduser()
    if "," in root and not path.is_dir():
        input_text, _, gt_text = root.partition(",")
        input_dir, gt_dir = Path(input_text.strip()).expanduser(), Path(gt_text.strip()).expanduser()
        require_dir(input_dir, "input folder", PAIRS_LAYOUT)
        require_dir(gt_dir, "ground-truth folder", PAIRS_LAYOUT)
        info = DatasetInfo(name=f"pairs:{root}", root=str(input_dir), split=split)
        dataset = paired_folders(input_dir, gt_dir, info, limit, hdr)
        identity = f"pairs:{input_dir.resolve()},{gt_dir.resolve()}"
    else:
        dataset = folder_pairs(path, split, limit, name=f"pairs:{root}", hdr=hdr)
        identity = format_identity("pairs", path)
    dataset.info.identity = f"{identity}#{canonical}" if canonical else identity
    return dataset
