"""The embedded default dataset `udc-mini`: scikit-image photos degraded by `synth`'s UDC capture model.

Layout (bundled in the package, PNG 8-bit RGB):
    udc_mini/meta.json                      simulation parameters, photo list, crop boxes, seed
    udc_mini/psf.npy                        the (3, 63, 63) PSF used (each channel sums to 1)
    udc_mini/psf_code.npy                   its 5-d code on the principal components of a bank of PSFs
                                            (`synth.psf_code`), the condition DISCNet-style models take
    udc_mini/{train,test}/{input,gt}/NAME.png

Split: every photo is split by columns. The right-hand strip (about 30 % of the width, inset by the PSF radius
from the border) holds the test crops (128×128, non-overlapping, at most 5 per photo, 24 in all); the left part,
separated from the strip by a 32-px gap, is one full-size train pair per photo (training takes random crops).
The whole photo is degraded first and then cut, so every crop sees real context through the blur.

`build_udc_mini(out_dir)` regenerates the files bit for bit on this platform (seeded PCG64 noise, float64
FFTs); the bundled copy is the reference, so users always read identical pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import udcbench.data.synth as synth

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "stereo_motorcycle",
          "immunohistochemistry", "retina")
CROP = 128
MAX_TEST_PER_PHOTO = 5
GAP = 32
SEED = 20261121
DISPLAY = "mini"
NOISE_LEVEL = 10024.0

BUNDLED_DIR = Path(__file__).resolve().parent / "udc_mini"


def load_photo(name: str) -> np.ndarray:
    """One of scikit-image's offline sample photos as (H, W, 3) uint8 (retina halved)."""
    import skimage.data  # only needed to regenerate; the bundled files need nothing

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    if name == "retina":  # 1411 px: halve it so it does not dominate the set
        image = np.asarray(Image.fromarray(image).resize((image.shape[1] // 2, image.shape[0] // 2),
                                                          Image.Resampling.BOX))
    return image


def _test_boxes(height: int, width: int, margin: int) -> tuple[list[tuple[int, int]], int]:
    """Top-left corners of the test crops and the first column of the test strip."""
    columns = max(1, int(0.3 * width) // CROP)
    x0 = width - margin - columns * CROP
    rows = (height - 2 * margin) // CROP
    corners = [(margin + r * CROP, x0 + c * CROP) for r in range(rows) for c in range(columns)]
    if len(corners) > MAX_TEST_PER_PHOTO:  # evenly spaced subset, deterministic
        picks = np.linspace(0, len(corners) - 1, MAX_TEST_PER_PHOTO).round().astype(int)
        corners = [corners[i] for i in picks]
    return corners, x0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8, rounded to nearest (as every udcbench-written PNG is quantised)."""
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def build_udc_mini(out_dir: Path) -> dict:
    """Write the whole dataset to out_dir and return its metadata."""
    out_dir = Path(out_dir)
    display, optics = synth.DISPLAYS[DISPLAY], synth.Optics()
    psf = synth.simulate_psf(display, optics)
    margin = optics.psf_size // 2
    rng = np.random.Generator(np.random.PCG64(SEED))
    for split in ("train", "test"):
        for kind in ("input", "gt"):
            (out_dir / split / kind).mkdir(parents=True, exist_ok=True)
    records = {"train": [], "test": []}
    for name in PHOTOS:
        clean = load_photo(name)
        degraded = to_uint8(synth.capture(clean.astype(np.float64) / 255.0, display, psf, rng, NOISE_LEVEL))
        height, width = clean.shape[:2]
        corners, x0 = _test_boxes(height, width, margin)
        for i, (top, left) in enumerate(corners):
            stem = f"{name}_{i:02d}"
            box = (slice(top, top + CROP), slice(left, left + CROP))
            Image.fromarray(degraded[box]).save(out_dir / "test" / "input" / f"{stem}.png")
            Image.fromarray(clean[box]).save(out_dir / "test" / "gt" / f"{stem}.png")
            records["test"].append({"name": stem, "photo": name, "top": top, "left": left, "size": CROP})
        right = x0 - GAP
        box = (slice(margin, height - margin), slice(margin, right))
        Image.fromarray(degraded[box]).save(out_dir / "train" / "input" / f"{name}.png")
        Image.fromarray(clean[box]).save(out_dir / "train" / "gt" / f"{name}.png")
        records["train"].append({"name": name, "photo": name, "top": margin, "left": margin,
                                 "height": height - 2 * margin, "width": right - margin})
    np.save(out_dir / "psf.npy", psf.astype(np.float32))
    code = synth.psf_code(psf, synth.psf_bank(display, optics))
    np.save(out_dir / "psf_code.npy", code.astype(np.float32))
    meta = {"name": "udc-mini", "seed": SEED, "noise_level": NOISE_LEVEL, "crop": CROP, "gap": GAP,
            "value_range": [0.0, 1.0], "tone_mapping": None, "source": "scikit-image data photos",
            "psf_code": [round(float(c), 6) for c in code],
            "simulation": synth.metadata(display, optics), "splits": records}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
