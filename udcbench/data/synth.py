"""A first physically motivated UDC capture model (Fraunhofer diffraction of a display's pixel openings).

The camera looks through a display whose opaque pixel circuitry leaves a periodic grid of openings. In the
Fraunhofer approximation the point spread function (PSF) at wavelength λ is the squared magnitude of the
Fourier transform of the pupil: a circular aperture of diameter D multiplied by the display's transmission
pattern T. With the pupil sampled at δ1 and an M-point FFT, the PSF lands on a grid of spacing λ·f/(M·δ1);
M is chosen per wavelength so that all three channels share one grid, which is then box-filtered onto the
sensor pixels. Each channel is normalised to sum 1. The periodic openings put diffraction orders at
f·λ/pitch on the sensor (grating equation) and the aperture gives each order an Airy core (first dark ring at
1.22·λ·f/D). With `Optics.spectrum` each channel is instead a weighted sum of such single-wavelength PSFs.

Capture (SDR): y = clip(t_c · (x ⊛ k_c) + n, 0, 1), with a per-channel display transmittance t_c left after
exposure compensation and Poisson-Gaussian noise n. Capture (HDR, `hdr=True`): x is linear radiance
(1 = diffuse white) and y = clip(t_c · (x ⊛ k_c) + n, 0, clip_max) stays linear; evaluate on `tone_map(y)`.
Convolution is by FFT on an image padded by the PSF radius (reflect), so nothing wraps around.

Displays (`Display`, `DISPLAYS`, `display_pattern`, `load_display`) live in `udcbench.data.displays` and are
re-exported here.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from udcbench.data.displays import DISPLAYS, Display, display_pattern, load_display
from udcbench.data.tonemap import inverse_tone_map, tone_map
from udcbench.errors import SpecError

__all__ = ["DISPLAYS", "Display", "Optics", "capture", "convolve", "display_pattern", "load_display", "metadata",
           "poisson_gaussian", "psf_bank", "psf_code", "psf_file", "psf_picture", "read_spectrum", "sdr_to_linear",
           "simulate_psf", "tone_map"]

MAX_FFT = 16384  # largest FFT side simulate_psf accepts (16384² complex128 is already 4 GiB)
SDR_CAP = 254.5 / 255  # sdr_to_linear caps u here: the top of the last 8-bit code's rounding interval


@dataclass(frozen=True)
class Optics:
    """Camera behind the display. Defaults: f = 10 mm, D = 4 mm, 2 µm pixels (as in the UDC literature).

    spectrum: optional, per channel (R, G, B) a tuple of (wavelength_nm, weight) pairs (see `read_spectrum`);
    when set it replaces wavelengths_nm: a channel's PSF is the weighted mean (weights normalised per channel)
    of the normalised single-wavelength PSFs, normalised again to sum 1.
    """

    focal_mm: float = 10.0
    aperture_mm: float = 4.0
    pupil_sample_um: float = 8.0
    sensor_pixel_um: float = 2.0
    wavelengths_nm: tuple[float, float, float] = (610.0, 530.0, 470.0)
    oversample: int = 5
    psf_size: int = 63
    spectrum: tuple | None = None

    def __post_init__(self):
        if self.spectrum is None:
            return
        hint = "Optics.spectrum must be three sequences (R, G, B) of (wavelength_nm, weight) pairs"
        try:
            channels = tuple(tuple((float(nm), float(w)) for nm, w in channel) for channel in self.spectrum)
        except (TypeError, ValueError) as error:
            raise SpecError(hint) from error
        if len(channels) != 3:
            raise SpecError(f"{hint}; got {len(channels)} channels")
        for name, channel in zip("RGB", channels):
            if any(not (math.isfinite(nm) and nm > 0) or not (math.isfinite(w) and w >= 0) for nm, w in channel):
                raise SpecError(f"{hint}; channel {name} has a non-positive wavelength or a negative weight")
            if sum(w for _, w in channel) <= 0:
                raise SpecError(f"{hint}; channel {name} has no positive weight")
        object.__setattr__(self, "spectrum", channels)  # tuples only: Optics stays hashable


def read_spectrum(path) -> tuple:
    """A spectrum for `Optics(spectrum=...)` from a CSV with header `nm,r,g,b`: one row per wavelength (nm),
    non-negative weights per channel (e.g. sensor response × illuminant). Zero-weight rows are dropped per channel."""
    path = Path(path)
    try:
        rows = [row for row in csv.reader(path.read_text().splitlines()) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read the spectrum file {str(path)!r}: {error}") from error
    if not rows or [c.strip().lower() for c in rows[0]] != ["nm", "r", "g", "b"]:
        raise SpecError(f"spectrum file {str(path)!r} must start with the header `nm,r,g,b`")
    channels = ([], [], [])
    for line, row in enumerate(rows[1:], start=2):
        try:
            nm, *weights = (float(c) for c in row)
        except ValueError as error:
            raise SpecError(f"spectrum file {str(path)!r}, row {line}: not a number ({error})") from error
        if len(weights) != 3 or not (math.isfinite(nm) and nm > 0):
            raise SpecError(f"spectrum file {str(path)!r}, row {line}: need 4 values, a positive wavelength first")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise SpecError(f"spectrum file {str(path)!r}, row {line}: weights must be non-negative")
        for channel, weight in zip(channels, weights):
            if weight > 0:
                channel.append((nm, weight))
    for name, channel in zip("RGB", channels):
        if not channel:
            raise SpecError(f"spectrum file {str(path)!r}: channel {name} is all zero; every channel needs light")
    return tuple(tuple(channel) for channel in channels)


def _fft_size(wavelength_nm: float, optics: Optics, pupil_n: int) -> int:
    """M such that the PSF grid spacing λ f / (M δ1) is the fine sensor step; checked to be usable."""
    fine_um = optics.sensor_pixel_um / optics.oversample
    m = int(round(wavelength_nm * 1e-9 * optics.focal_mm * 1e-3 / (fine_um * 1e-6 * optics.pupil_sample_um * 1e-6)))
    if m > MAX_FFT:
        raise SpecError(f"at {wavelength_nm} nm the PSF needs a {m}×{m} FFT (> {MAX_FFT}): the step "
                        f"sensor_pixel_um/oversample = {fine_um:.4g} µm is too fine for pupil_sample_um = "
                        f"{optics.pupil_sample_um}; raise sensor_pixel_um or pupil_sample_um, or lower oversample")
    if m < pupil_n:
        limit = wavelength_nm * 1e-3 * optics.focal_mm / optics.aperture_mm
        raise SpecError(f"at {wavelength_nm} nm the step sensor_pixel_um/oversample = {fine_um:.4g} µm is coarser "
                        f"than λf/D = {limit:.4g} µm, so the PSF would be undersampled; raise oversample")
    if optics.psf_size * optics.oversample > m:
        period = wavelength_nm * 1e-3 * optics.focal_mm / optics.pupil_sample_um * 1e3
        raise SpecError(f"at {wavelength_nm} nm the PSF window ({optics.psf_size} px) is wider than the period "
                        f"λf/δ1 = {period:.4g} µm of the sampled pupil's pattern; lower psf_size or pupil_sample_um")
    return m


def _check_optics(optics: Optics) -> None:
    if optics.psf_size % 2 == 0 or optics.oversample % 2 == 0:
        raise SpecError("psf_size and oversample must be odd so the PSF is centred on a pixel; pick odd values")
    if optics.psf_size < 1 or optics.oversample < 1:
        raise SpecError("psf_size and oversample must be positive odd integers")
    for name in ("focal_mm", "aperture_mm", "pupil_sample_um", "sensor_pixel_um"):
        value = getattr(optics, name)
        if not (math.isfinite(value) and value > 0):
            raise SpecError(f"Optics.{name} must be a positive number, got {value}")
    if optics.spectrum is None and (len(optics.wavelengths_nm) != 3 or min(optics.wavelengths_nm) <= 0):
        raise SpecError("Optics.wavelengths_nm must be three positive wavelengths (R, G, B) in nm")


def _mono_psf(pupil: np.ndarray, wavelength_nm: float, optics: Optics) -> np.ndarray:
    """The single-wavelength PSF on the sensor grid, normalised to sum 1."""
    pupil_n = pupil.shape[0]
    m = _fft_size(wavelength_nm, optics, pupil_n)
    field = np.zeros((m, m))
    start = m // 2 - pupil_n // 2
    field[start:start + pupil_n, start:start + pupil_n] = pupil
    intensity = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(field)))) ** 2
    half = optics.psf_size * optics.oversample // 2
    c = m // 2
    crop = intensity[c - half:c + half + 1, c - half:c + half + 1]
    k = optics.oversample
    sensor = crop.reshape(optics.psf_size, k, optics.psf_size, k).sum(axis=(1, 3))
    return sensor / sensor.sum()


def simulate_psf(display: Display, optics: Optics = Optics()) -> np.ndarray:
    """PSF on the sensor grid, shape (3, psf_size, psf_size), float64, each channel summing to 1."""
    _check_optics(optics)
    pupil_n = int(np.ceil(optics.aperture_mm * 1000 / optics.pupil_sample_um)) + 2
    if optics.spectrum is None:
        wavelengths = list(optics.wavelengths_nm)
    else:
        wavelengths = sorted({nm for channel in optics.spectrum for nm, w in channel if w > 0})
    for wavelength_nm in wavelengths:  # fail before any FFT
        _fft_size(wavelength_nm, optics, pupil_n)
    coords = (np.arange(pupil_n) - pupil_n // 2) * optics.pupil_sample_um
    radius = np.hypot(coords[:, None], coords[None, :])
    pupil = (radius <= optics.aperture_mm * 500).astype(np.float64)
    pupil *= display_pattern(display, pupil_n, optics.pupil_sample_um)
    if not pupil.any():
        raise SpecError(f"display {display.name!r} lets no light through the {optics.aperture_mm} mm aperture "
                        f"at pupil_sample_um = {optics.pupil_sample_um}; lower pupil_sample_um")
    cache: dict[float, np.ndarray] = {}

    def mono(wavelength_nm: float) -> np.ndarray:
        if wavelength_nm not in cache:
            cache[wavelength_nm] = _mono_psf(pupil, wavelength_nm, optics)
        return cache[wavelength_nm]

    if optics.spectrum is None:
        return np.stack([mono(wavelength_nm) for wavelength_nm in optics.wavelengths_nm])
    channels = []
    for channel in optics.spectrum:
        total = sum(w for _, w in channel)
        mixed = sum((w / total) * mono(nm) for nm, w in channel if w > 0)
        channels.append(mixed / mixed.sum())
    return np.stack(channels)


def convolve(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Per-channel linear convolution of an HxWx3 float image with a (3, k, k) PSF, same size, no wrap-around."""
    r = psf.shape[-1] // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = padded.shape[:2]
    fh, fw = h + 2 * r, w + 2 * r  # linear (not circular) convolution size
    out = np.empty_like(image, dtype=np.float64)
    for c in range(3):
        spectrum = np.fft.rfft2(padded[..., c], s=(fh, fw)) * np.fft.rfft2(psf[c], s=(fh, fw))
        full = np.fft.irfft2(spectrum, s=(fh, fw))
        out[..., c] = full[2 * r:2 * r + image.shape[0], 2 * r:2 * r + image.shape[1]]
    return out


def poisson_gaussian(signal: np.ndarray, level: float, rng: np.random.Generator, read_std: float = 4.87,
                     full_well: float = 15506.0) -> np.ndarray:
    """min(Poisson(L·s) + read_std·N(0,1), full_well) / L (Poisson-Gaussian sensor noise)."""
    electrons = rng.poisson(np.clip(signal, 0, None) * level) + read_std * rng.standard_normal(signal.shape)
    return np.minimum(electrons, full_well) / level


def sdr_to_linear(u: np.ndarray) -> np.ndarray:
    """An 8-bit-derived [0, 1] photo as HDR radiance, by inverting the tone map: x = 0.25·u / (1 − u).

    u is capped at 254.5/255 (the last code's rounding interval), so highlights reach 0.25·254.5/0.5 ≈ 127:
    the default clip at 500 in `capture(..., hdr=True)` never binds for 8-bit sources.
    """
    return inverse_tone_map(np.asarray(u, dtype=np.float64), cap=SDR_CAP)


def capture(image: np.ndarray, display: Display, psf: np.ndarray, rng: np.random.Generator,
            noise_level: float | None = 10024.0, hdr: bool = False, clip_max: float = 500.0) -> np.ndarray:
    """UDC capture of an HxWx3 image through `display` with `psf` (3, k, k).

    SDR (default): image in [0, 1]; returns clip(t_c · (x ⊛ k_c) + n, 0, 1) with Poisson-Gaussian noise n at
    level L = noise_level (None: no noise), capped at the full well (`poisson_gaussian`).
    HDR (hdr=True): image is linear radiance (float ≥ 0, 1 = diffuse white); returns the linear capture
    clip(t_c · (x ⊛ k_c) + n, 0, clip_max). The noise is Poisson-Gaussian in the same units as SDR but without
    the full-well cap: the clip at clip_max plays that role. Apply `tone_map` to evaluate.
    """
    if not hdr:
        blurred = convolve(image.astype(np.float64), psf) * np.asarray(display.transmittance)
        if noise_level is not None:
            blurred = poisson_gaussian(blurred, noise_level, rng)
        return np.clip(blurred, 0.0, 1.0)
    radiance = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(radiance)) or (radiance.size and radiance.min() < 0):
        raise SpecError("an HDR capture takes linear radiance: finite values >= 0 (use sdr_to_linear for photos)")
    if not clip_max > 0:
        raise SpecError(f"clip_max must be positive, got {clip_max}")
    blurred = convolve(radiance, psf) * np.asarray(display.transmittance)
    if noise_level is not None:
        blurred = poisson_gaussian(blurred, noise_level, rng, full_well=np.inf)
    return np.clip(blurred, 0.0, clip_max)


def psf_file(psf: np.ndarray, display: Display) -> np.ndarray:
    """What every psf.npy udcbench writes (`udcbench psf`, `udcbench synth`) holds: the blur a capture through
    `display` goes through — the (3, k, k) PSF times the per-channel transmittance, so channel sums are the
    transmittances — as (k, k, 3) float32, the layout of the dataset formats (DISCNet's SYNTH PSFs)."""
    kernel = np.asarray(psf, dtype=np.float64) * np.asarray(display.transmittance)[:, None, None]
    return np.ascontiguousarray(kernel.transpose(1, 2, 0), dtype=np.float32)


def psf_picture(psf: np.ndarray, decades: int = 4, zoom: int = 4) -> np.ndarray:
    """A PSF as a uint8 RGB picture (H·zoom, W·zoom, 3) on a log scale: log10 of each channel relative to the
    global peak, −decades..0 mapped onto 0..255 (below the floor: 0), zoomed by pixel repetition. Shows the
    Airy core and the diffraction orders that a linear view hides."""
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim != 3 or psf.shape[0] != 3:
        raise SpecError(f"psf_picture takes a (3, H, W) PSF, got shape {psf.shape}")
    if not decades > 0 or int(zoom) != zoom or zoom < 1:
        raise SpecError("psf_picture needs decades > 0 and an integer zoom >= 1")
    peak = psf.max()
    if not peak > 0:
        raise SpecError("psf_picture: the PSF has no positive value")
    with np.errstate(divide="ignore"):
        level = np.log10(np.clip(psf, 0.0, None) / peak)
    picture = np.round(np.clip((level + decades) / decades, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)
    zoom = int(zoom)
    return np.repeat(np.repeat(picture, zoom, axis=0), zoom, axis=1)


def psf_code(psf: np.ndarray, bank: list[np.ndarray], components: int = 5) -> np.ndarray:
    """A low-dimensional PSF code, as DISCNet conditions on: the PSF's coefficients on the first principal
    components of a bank of PSFs (each flattened; the bank mean removed). Shape (components,)."""
    stack = np.stack([b.reshape(-1) for b in bank])
    mean = stack.mean(axis=0)
    _, _, basis = np.linalg.svd(stack - mean, full_matrices=False)
    basis = basis[:components]
    basis *= np.sign(basis[:, :1] + 1e-30)  # fix each component's sign so the code is deterministic
    return (psf.reshape(-1) - mean) @ basis.T


def psf_bank(base: Display, optics: Optics = Optics(), openings=(0.4, 0.55, 0.7, 0.85)) -> list[np.ndarray]:
    """PSFs of rectangle displays like `base` (its pitch; a mask dropped) with other opening widths/heights
    (the basis for `psf_code`)."""
    return [simulate_psf(dataclasses.replace(base, name=f"{base.name}-{ox}x{oy}", open_x=ox, open_y=oy,
                                             mask=None, source=None), optics)
            for ox in openings for oy in openings]


def metadata(display: Display, optics: Optics) -> dict:
    """Every simulation parameter, JSON-serialisable, for the dataset's meta.json (a mask as its shape, opening
    ratio, sha256 and source path; the spectrum only when set)."""
    shown = {f.name: getattr(display, f.name) for f in dataclasses.fields(display) if f.name not in ("mask", "source")}
    shown["transmittance"] = list(display.transmittance)
    if display.mask is not None:
        shown["mask"] = {"shape": list(display.mask.shape), "opening_ratio": display.opening_ratio,
                         "sha256": display.mask_sha256()}
    if display.source is not None:
        shown["source"] = display.source
    lens = dataclasses.asdict(optics)
    lens["wavelengths_nm"] = list(optics.wavelengths_nm)
    if optics.spectrum is None:
        del lens["spectrum"]
    else:
        lens["spectrum"] = [[list(pair) for pair in channel] for channel in optics.spectrum]
    return {"display": shown, "optics": lens, "opening_ratio": display.opening_ratio}
