"""`udcbench synth`: a UDC dataset made from any clean photos by the capture simulator (`synth.py`).

Each photo is resized so its short side is `size` plus a PSF radius on every side, put through the capture
model (PSF convolution, per-channel display transmittance, optional Poisson-Gaussian noise; `hdr` adds the
HDR path: linear radiance, clipping to [0, 500], tone-mapped evaluation), and the centre `size`×`size` is
kept, so every border pixel saw real context through the blur. A seeded permutation of the photos picks the
test split; the rest is the train split.

Layouts (both read back by `--data synth:OUT` / `--data mipi:OUT`):
    synth (default, DISCNet's SYNTH):  GT/{train,test}/NAME.EXT, input/{DISPLAY}_1/{train,test}/NAME.EXT,
                                      PSF/{DISPLAY}/{DISPLAY}_psf_1.npy (k,k,3), PSF/kernel_code/{DISPLAY}_code_1.npy
    mipi (MIPI 2022 UDC):              {training,test}/{input,GT}/NAME.EXT
EXT is .npy (float32 linear HDR) with `hdr`, else .png (8-bit sRGB). Both layouts also get, at the root:
`psf.npy` (k,k,3) float32 — the blur the inputs went through (PSF × per-channel transmittance, so channel sums
are the transmittances) —, `psf_code.npy` (5,), `psf.png` (the PSF on a log scale, to look at) and
`meta.json` (every simulation parameter, the seed, the photos and the split).

The dataset is written into a temporary sibling folder and renamed into place at the end: an error or an
interruption never leaves a half-written dataset under OUT. Folders and files get the modes of the umask, as
`mkdir` and `cp` would make them (0755 and 0644 under umask 022).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import udcbench.data.synth as synth
from udcbench.data.mini import PHOTOS, load_photo, to_uint8
from udcbench.data.readers import PIL_ERRORS, open_image
from udcbench.data.tonemap import TONE_MAP
from udcbench.errors import DataError, SpecError

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
LAYOUTS = ("synth", "mipi")
CODE_BANK_OPENINGS = (0.4, 0.6, 0.8)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What `make_dataset` builds; every field is recorded in meta.json."""

    display: str = "toled"
    size: int = 256
    noise: float | None = None  # photon level L of the sensor noise (273 … 10024, larger = cleaner); None: none
    hdr: bool = False
    clip_max: float = 500.0
    layout: str = "synth"
    test_fraction: float = 0.2
    seed: int = 0
    pitch_um: float | None = None
    opening: float | None = None  # opening ratio: rescales a preset's opening, keeping its aspect


def list_photos(src: str | Path) -> list[tuple[str, object]]:
    """(name, source) pairs: image files / .npy files of a folder, or 'skimage' for scikit-image's photos."""
    if str(src) == "skimage":
        try:
            import skimage.data  # noqa: F401
        except ImportError:
            raise DataError("--src skimage needs scikit-image: pip install -c constraints.txt 'udcbench[data]'") \
                from None
        return [(name, name) for name in PHOTOS]
    folder = Path(src).expanduser()
    if not folder.is_dir():
        raise DataError(f"photo folder {folder} does not exist; pass a folder of PNG/JPEG photos (or .npy HDR "
                        "images with --hdr), or --src skimage for scikit-image's sample photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES + (".npy",))
    if not files:
        raise DataError(f"{folder} holds no photos (.png, .jpg, .tif, .bmp, .webp, or .npy); put the clean "
                        "photos to degrade there")
    stems = [p.stem for p in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise DataError(f"photos {', '.join(twice[:3])} appear with two extensions in {folder}; keep one file "
                        "per name (the name becomes the dataset's file name)")
    return [(p.stem, p) for p in files]


def _check_photo(source: object, hdr: bool) -> None:
    """Cheap validation before anything is written: readable header, RGB, HDR .npy only with --hdr."""
    if isinstance(source, str):
        return
    path = Path(source)
    if path.suffix.lower() == ".npy":
        if not hdr:
            raise DataError(f"{path} is a .npy (HDR) photo; pass --hdr to simulate HDR captures, or use 8-bit "
                            "images")
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise DataError(f"cannot read {path}: {error}; replace the corrupt file") from None
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype.kind != "f":
            raise DataError(f"{path} is {array.dtype} {array.shape}; HDR photos must be float (H, W, 3) "
                            "linear radiance")
        return
    with open_image(path, "photo", "replace or remove the corrupt file") as handle:
        try:
            handle.verify()
        except PIL_ERRORS as error:
            raise DataError(f"cannot read photo {path}: {error}; replace or remove the corrupt file") from None


def _read_photo(source: object) -> tuple[np.ndarray, bool]:
    """(H, W, 3) array and whether it is linear HDR (float .npy) rather than 8-bit."""
    if isinstance(source, str):
        return load_photo(source), False
    path = Path(source)
    if path.suffix.lower() == ".npy":
        return np.clip(np.load(path).astype(np.float64), 0.0, None), True
    with open_image(path, "photo", "replace or remove the corrupt file") as handle:
        if handle.mode not in ("RGB", "L", "P", "RGBA", "LA"):
            raise DataError(f"{path} has image mode {handle.mode}; udcbench synth reads 8-bit photos — "
                            "convert it to 8-bit RGB")
        try:
            return np.asarray(handle.convert("RGB")), False
        except PIL_ERRORS as error:
            raise DataError(f"cannot read photo {path}: {error}; replace or remove the corrupt file") from None


def _fit(image: np.ndarray, side: int, is_hdr: bool) -> np.ndarray:
    """Resize the short side to `side` (8-bit: Lanczos) or reflect-pad/crop (HDR), then centre-crop a square."""
    height, width = image.shape[:2]
    if not is_hdr:
        scale = side / min(height, width)
        size = (max(side, round(width * scale)), max(side, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    else:
        pad_h, pad_w = max(0, side - height), max(0, side - width)
        if pad_h >= height or pad_w >= width:
            raise DataError(f"an HDR photo of {height}×{width} is too small for --size plus the PSF margin "
                            f"({side}); pick a smaller --size")
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                       mode="reflect")
    height, width = image.shape[:2]
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side]


def resolve_display(config: SynthConfig) -> synth.Display:
    display = synth.load_display(config.display, pitch_um=config.pitch_um)
    if config.opening is not None:
        if not 0 < config.opening <= 1:
            raise SpecError(f"--opening is the display's opening ratio and must lie in (0, 1], got {config.opening}")
        if display.mask is not None:
            raise SpecError("--opening rescales a preset's rectangular opening; a mask image fixes its own "
                            "opening — edit the mask instead")
        scale = (config.opening / display.opening_ratio) ** 0.5
        if display.open_x * scale > 1 or display.open_y * scale > 1:
            raise SpecError(f"opening ratio {config.opening} does not fit the {display.name} cell's aspect; "
                            "pick a smaller --opening or a mask image")
        display = dataclasses.replace(display, open_x=display.open_x * scale, open_y=display.open_y * scale)
    return display


def fit_optics(display: synth.Display, optics: synth.Optics, psf_size: bool = True,
               pupil: bool = True) -> synth.Optics:
    """Optics adjusted to a display: (psf_size) a window wide enough to hold every channel's first diffraction
    orders with a quarter of their distance to spare (f·λ/pitch on the sensor; never smaller than given), and
    (pupil) pupil samples no coarser than a quarter of the cell's smallest opening (or pitch/16 for a mask),
    so the pattern is not aliased. The CLI applies both (psf_size only without --psf-size); meta.json records
    the optics used."""
    changes = {}
    if psf_size:
        longest = max(nm for channel in optics.spectrum for nm, _ in channel) if optics.spectrum \
            else max(optics.wavelengths_nm)
        order_px = optics.focal_mm * 1e3 * longest * 1e-3 / display.pitch_um / optics.sensor_pixel_um
        need = 2 * int(np.ceil(1.25 * order_px)) + 1
        changes["psf_size"] = max(optics.psf_size, need)
    if pupil:
        feature = display.pitch_um / 4 * (min(display.open_x, display.open_y) if display.mask is None else 0.25)
        changes["pupil_sample_um"] = min(optics.pupil_sample_um, round(feature, 3))
    return dataclasses.replace(optics, **changes)


def _psf_code(display: synth.Display, optics: synth.Optics, psf: np.ndarray) -> np.ndarray:
    """The 5-d PSF code on a bank of rectangular displays of the same pitch (as udc-mini's)."""
    base = dataclasses.replace(display, mask=None, source=None)
    return synth.psf_code(psf, synth.psf_bank(base, optics, openings=CODE_BANK_OPENINGS))


def _save(path: Path, image: np.ndarray, hdr: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if hdr:
        np.save(path.with_suffix(".npy"), image.astype(np.float32))
    else:
        Image.fromarray(to_uint8(image)).save(path.with_suffix(".png"))


def _split_dirs(layout: str, family: str, split: str) -> tuple[Path, Path]:
    if layout == "synth":
        return Path("input") / f"{family}_1" / split, Path("GT") / split
    folder = {"train": "training", "test": "test"}[split]
    return Path(folder) / "input", Path(folder) / "GT"


def make_dataset(src: str | Path, out: str | Path, config: SynthConfig = SynthConfig(),
                 optics: synth.Optics = synth.Optics(), progress=None) -> dict:
    """Simulate UDC captures of the photos in `src` into a new dataset folder `out`; returns its metadata."""
    out = Path(out)
    if config.layout not in LAYOUTS:
        raise SpecError(f"--layout must be one of {', '.join(LAYOUTS)}, got {config.layout!r}; e.g. --layout synth")
    if config.size < 16:
        raise SpecError(f"--size must be at least 16 pixels, got {config.size}; e.g. --size 256")
    if config.noise is not None and config.noise <= 0:
        raise SpecError(f"--noise is a photon level L > 0 (273 noisy … 10024 clean), got {config.noise}")
    if not 0 <= config.test_fraction < 1:
        raise SpecError(f"--test-fraction must lie in [0, 1), got {config.test_fraction}; e.g. --test-fraction 0.2")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not empty; pass a new folder")
    display = resolve_display(config)
    photos = list_photos(src)
    for _, source in photos:
        _check_photo(source, config.hdr)
    psf = synth.simulate_psf(display, optics)
    family = "".join(c if c.isalnum() else "_" for c in display.name)
    rng = np.random.Generator(np.random.PCG64(config.seed))
    order = rng.permutation(len(photos))
    n_test = int(round(config.test_fraction * len(photos)))
    if config.test_fraction > 0 and len(photos) > 1:
        n_test = min(max(n_test, 1), len(photos) - 1)
    test_names = {photos[i][0] for i in order[:n_test]}
    margin = optics.psf_size // 2

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700, private until renamed
    staging = scratch / out.name
    try:
        staging.mkdir()  # the dataset folder gets the umask's mode, as `mkdir` would make it (0755 under 022)
        splits: dict[str, list[str]] = {"train": [], "test": []}
        for index, (name, source) in enumerate(photos):
            image, is_hdr = _read_photo(source)
            fitted = _fit(image, config.size + 2 * margin, is_hdr)
            if config.hdr:
                clean = fitted if is_hdr else synth.sdr_to_linear(fitted.astype(np.float64) / 255.0)
            else:
                clean = fitted.astype(np.float64) / 255.0
            degraded = synth.capture(clean, display, psf, rng, config.noise, hdr=config.hdr,
                                     clip_max=config.clip_max)
            keep = (slice(margin, margin + config.size), slice(margin, margin + config.size))
            split = "test" if name in test_names else "train"
            input_dir, gt_dir = _split_dirs(config.layout, family, split)
            _save(staging / input_dir / name, degraded[keep], config.hdr)
            _save(staging / gt_dir / name, clean[keep], config.hdr)
            splits[split].append(name)
            if progress is not None:
                progress(index + 1, len(photos), name)
        kernel = synth.psf_file(psf, display)
        code = _psf_code(display, optics, psf).astype(np.float32)
        np.save(staging / "psf.npy", kernel)
        np.save(staging / "psf_code.npy", code)
        if config.layout == "synth":
            (staging / "PSF" / family).mkdir(parents=True)
            (staging / "PSF" / "kernel_code").mkdir(parents=True)
            np.save(staging / "PSF" / family / f"{family}_psf_1.npy", kernel)
            np.save(staging / "PSF" / "kernel_code" / f"{family}_code_1.npy", code)
        Image.fromarray(synth.psf_picture(psf)).save(staging / "psf.png")
        meta = {"name": out.name, "made_by": "udcbench synth", "layout": config.layout, "family": family,
                "config": dataclasses.asdict(config), "source": str(src),
                "value_range": [0.0, config.clip_max] if config.hdr else [0.0, 1.0],
                "tone_mapping": TONE_MAP if config.hdr else None,
                "file_kind": "npy float32 linear HDR" if config.hdr else "png 8-bit sRGB",
                "psf_file": "psf.npy: (k, k, 3) PSF × per-channel transmittance (the blur the inputs went through)",
                "psf_code": [round(float(c), 6) for c in code],
                "simulation": synth.metadata(display, optics), "splits": splits}
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return meta
