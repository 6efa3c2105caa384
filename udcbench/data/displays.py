"""Displays a camera can sit behind: a periodic transmission pattern, one unit cell tiled at a pitch.

A display is either a rectangular opening per cell (`open_x`, `open_y` as fractions of the pitch) or an arbitrary
unit cell given as a mask image (`mask`, transmission in [0, 1]). `transmittance` is the per-channel (R, G, B)
light left after the panel *and* the camera's exposure compensation; it scales the image before the blur.

Presets (`DISPLAYS`):
- "toled": a transparent OLED as the UDC literature describes the T-OLED panel: 168 µm cells, one 0.58 × 0.36
  opening (ratio 0.2088 ≈ the 0.21 reference). Orders at f·λ/pitch = 36 / 32 / 28 µm (R/G/B) for f = 10 mm.
- "mini": the embedded udc-mini set: 168 µm cells, 0.75 × 0.56 opening (ratio 0.42), a milder blur that a small
  network learns on a CPU in minutes.
- "poled": a pentile-like phone P-OLED. Published work only says it transmits far less than T-OLED (a
  few %, unverified), so every number here is our own, unverified choice: a 400 ppi panel (pitch 25.4 mm / 400 =
  63.5 µm) with one small 0.40 × 0.30 opening per cell (ratio 0.12), standing in for the gaps between the
  diamond-pentile subpixels (a real RG/BG cell would add weaker orders; give a mask image for that).
  Transmittance (0.50, 0.42, 0.20) = the opening ratio relative to the 0.21 reference (0.57) times a yellowish
  tint (0.88, 0.74, 0.35) for the polyimide substrate, which absorbs blue most: the yellow-green cast of P-OLED
  captures. Its first orders land at f·λ/pitch = 96 / 83 / 74 µm for f = 10 mm, i.e. 48 / 42 / 37 px of 2 µm:
  use psf_size ≥ 101 to see them, and pupil_sample_um ≤ 4 so the 63.5 µm cell is not aliased by the pupil grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from udcbench.errors import SpecError

MASK_PITCH_UM = 168.0  # default pitch of a mask image's unit cell (the T-OLED cell)


@dataclass(frozen=True)
class Display:
    """A display's periodic transmission pattern.

    pitch_um: unit-cell pitch (both axes); open_x / open_y: opening width / height as fractions of the pitch
    (ignored when `mask` is set); transmittance: per-channel (R, G, B) light left after the panel and exposure
    compensation; mask: optional unit cell, H×W transmission in [0, 1] spanning pitch_um × pitch_um (row 0 on
    top); source: the mask file's path, when it came from one.
    """

    name: str
    pitch_um: float
    open_x: float
    open_y: float
    transmittance: tuple[float, float, float]
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    source: str | None = None

    def __post_init__(self):
        if not self.pitch_um > 0:
            raise SpecError(f"display {self.name!r}: pitch_um must be positive, got {self.pitch_um}")
        if not (0 <= self.open_x <= 1 and 0 <= self.open_y <= 1):
            raise SpecError(f"display {self.name!r}: open_x and open_y are fractions of the pitch, in [0, 1]")
        transmittance = tuple(float(t) for t in self.transmittance)
        if len(transmittance) != 3 or min(transmittance) < 0:
            raise SpecError(f"display {self.name!r}: transmittance must be three non-negative numbers (R, G, B)")
        object.__setattr__(self, "transmittance", transmittance)
        if self.mask is not None:
            mask = np.array(self.mask, dtype=np.float64)  # a private copy, made read-only below
            if mask.ndim != 2 or mask.size == 0 or not np.all(np.isfinite(mask)) or mask.min() < 0 or mask.max() > 1:
                raise SpecError(f"display {self.name!r}: mask must be a non-empty 2-D array of values in [0, 1]")
            mask.setflags(write=False)
            object.__setattr__(self, "mask", mask)

    @property
    def opening_ratio(self) -> float:
        return float(self.mask.mean()) if self.mask is not None else self.open_x * self.open_y

    def mask_sha256(self) -> str | None:
        """sha256 of the mask's float64 bytes (C order), or None without a mask."""
        return None if self.mask is None else hashlib.sha256(np.ascontiguousarray(self.mask).tobytes()).hexdigest()


DISPLAYS = {
    # 168 µm pitch, 0.58 × 0.36 opening, ratio 0.2088 (the T-OLED reference ≈ 0.21)
    "toled": Display("toled", pitch_um=168.0, open_x=0.58, open_y=0.36, transmittance=(0.92, 0.88, 0.80)),
    # 63.5 µm pitch (400 ppi), 0.40 × 0.30 opening, ratio 0.12; unverified choices, see the module docstring
    "poled": Display("poled", pitch_um=63.5, open_x=0.40, open_y=0.30, transmittance=(0.50, 0.42, 0.20)),
    # 168 µm pitch, 0.75 × 0.56 opening, ratio 0.42: the embedded udc-mini set (keep as is: it is regenerated)
    "mini": Display("mini", pitch_um=168.0, open_x=0.75, open_y=0.56, transmittance=(0.93, 0.90, 0.82)),
}


def display_pattern(display: Display, n: int, sample_um: float) -> np.ndarray:
    """Transmission of the display sampled on an n×n grid of spacing sample_um (a cell centred on the origin).

    Rectangle: 1 where |position inside the cell| <= half the opening (so open_x = open_y = 1 is fully open).
    Mask: nearest-neighbour sample of the unit cell: the mask pixel containing each sample's position in its cell.
    """
    coords = (np.arange(n) - n // 2) * sample_um
    if display.mask is not None:
        frac = np.mod(coords / display.pitch_um + 0.5, 1.0)  # position inside the cell from its top/left, [0, 1)
        h, w = display.mask.shape
        rows = np.minimum((frac * h).astype(np.int64), h - 1)
        cols = np.minimum((frac * w).astype(np.int64), w - 1)
        return display.mask[np.ix_(rows, cols)].astype(np.float64)
    phase = np.mod(coords / display.pitch_um + 0.5, 1.0) - 0.5  # position inside the cell, in [-0.5, 0.5)
    open_x = np.abs(phase) <= display.open_x / 2
    open_y = np.abs(phase) <= display.open_y / 2
    return (open_y[:, None] & open_x[None, :]).astype(np.float64)


def _read_mask(path: Path) -> np.ndarray:
    from udcbench.data.readers import open_image

    with open_image(path, "display mask image", "pass a PNG of one unit cell (white = open)") as image:
        try:
            image.load()
            if image.mode.startswith("I;16") or image.mode == "I":
                return np.clip(np.asarray(image, dtype=np.float64) / 65535.0, 0.0, 1.0)
            if image.mode == "F":
                return np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
            return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        except Exception as error:  # PIL raises several types for unreadable files
            raise SpecError(f"cannot read the display mask image {str(path)!r}: {error}") from error


def load_display(spec: str, pitch_um: float | None = None,
                 transmittance: tuple[float, float, float] | None = None) -> Display:
    """A display from a preset name in DISPLAYS or from a mask image file.

    A mask image is ONE unit cell (any PIL-readable format; converted to grayscale, value/255 = transmission,
    white = open; 16-bit images /65535), tiled at pitch_um (default 168 µm, the T-OLED cell). It carries the
    geometry only: its transmittance defaults to (1, 1, 1), so give the panel's colour transmittance explicitly.
    Its open_x = open_y = sqrt(opening ratio) (the equivalent square opening; only informative).
    pitch_um / transmittance given with a preset override the preset's values.
    """
    overrides = {}
    if pitch_um is not None:
        overrides["pitch_um"] = float(pitch_um)
    if transmittance is not None:
        overrides["transmittance"] = tuple(transmittance)
    if spec in DISPLAYS:
        return dataclasses.replace(DISPLAYS[spec], **overrides) if overrides else DISPLAYS[spec]
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"unknown display {spec!r}: give a preset ({', '.join(sorted(DISPLAYS))}) "
                        f"or the path of a mask image (one unit cell, white = open)")
    mask = _read_mask(path)
    ratio = float(mask.mean())
    if ratio <= 0:
        raise SpecError(f"display mask {str(path)!r} is all black (opening ratio 0): nothing gets through; "
                        f"white = open")
    side = float(np.sqrt(ratio))
    return Display(path.stem, pitch_um=overrides.get("pitch_um", MASK_PITCH_UM), open_x=side, open_y=side,
                   transmittance=overrides.get("transmittance", (1.0, 1.0, 1.0)), mask=mask, source=str(path))
