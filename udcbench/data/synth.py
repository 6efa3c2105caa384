"""A first physically motivated UDC capture model (Fraunhofer diffraction of a display's pixel openings).

The camera looks through a display whose opaque pixel circuitry leaves a periodic grid of openings. In the
Fraunhofer approximation the point spread function (PSF) at wavelength λ is the squared magnitude of the
Fourier transform of the pupil: a circular aperture of diameter D multiplied by the display's transmission
pattern T. With the pupil sampled at δ1 and an M-point FFT, the PSF lands on a grid of spacing λ·f/(M·δ1);
M is chosen per wavelength so that all three channels share one grid, which is then box-filtered onto the
sensor pixels. Each channel is normalised to sum 1. The periodic openings put diffraction orders at
f·λ/pitch on the sensor (grating equation) and the aperture gives each order an Airy core.

Capture (SDR): y = clip(t_c · (x ⊛ k_c) + n, 0, 1), with a per-channel display transmittance t_c left after
exposure compensation and Poisson-Gaussian noise n. Convolution is by FFT on an image padded by the PSF
radius (reflect), so nothing wraps around.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from udcbench.errors import SpecError


@dataclass(frozen=True)
class Display:
    """A display's periodic transmission pattern: a rectangular opening per unit cell.

    pitch_um: unit-cell pitch; open_x / open_y: opening width / height as fractions of the pitch;
    transmittance: per-channel (R, G, B) light left after the panel and the camera's exposure compensation.
    """

    name: str
    pitch_um: float
    open_x: float
    open_y: float
    transmittance: tuple[float, float, float]

    @property
    def opening_ratio(self) -> float:
        return self.open_x * self.open_y


@dataclass(frozen=True)
class Optics:
    """Camera behind the display. Defaults follow PROTOCOL.md §6 (f = 10 mm, D = 4 mm, 2 µm pixels)."""

    focal_mm: float = 10.0
    aperture_mm: float = 4.0
    pupil_sample_um: float = 8.0
    sensor_pixel_um: float = 2.0
    wavelengths_nm: tuple[float, float, float] = (610.0, 530.0, 470.0)
    oversample: int = 5
    psf_size: int = 63


# A transparent-OLED-like panel: 168 µm cells, openings of 0.21 of the cell area... scaled up to a milder
# 0.42 for the embedded mini set so that a small network can learn the inverse on a CPU in minutes.
DISPLAYS = {
    "toled": Display("toled", pitch_um=168.0, open_x=0.58, open_y=0.36, transmittance=(0.92, 0.88, 0.80)),
    "mini": Display("mini", pitch_um=168.0, open_x=0.75, open_y=0.56, transmittance=(0.93, 0.90, 0.82)),
}


def display_pattern(display: Display, n: int, sample_um: float) -> np.ndarray:
    """Binary transmission of the display sampled on an n×n grid of spacing sample_um (cells centred)."""
    coords = (np.arange(n) - n // 2) * sample_um
    phase = np.mod(coords / display.pitch_um + 0.5, 1.0) - 0.5  # position inside the cell, in [-0.5, 0.5)
    open_x = np.abs(phase) < display.open_x / 2
    open_y = np.abs(phase) < display.open_y / 2
    return (open_y[:, None] & open_x[None, :]).astype(np.float64)


def simulate_psf(display: Display, optics: Optics = Optics()) -> np.ndarray:
    """PSF on the sensor grid, shape (3, psf_size, psf_size), float64, each channel summing to 1."""
    if optics.psf_size % 2 == 0 or optics.oversample % 2 == 0:
        raise SpecError("psf_size and oversample must be odd so the PSF is centred on a pixel; pick odd values")
    fine_um = optics.sensor_pixel_um / optics.oversample
    pupil_n = int(np.ceil(optics.aperture_mm * 1000 / optics.pupil_sample_um)) + 2
    coords = (np.arange(pupil_n) - pupil_n // 2) * optics.pupil_sample_um
    radius = np.hypot(coords[:, None], coords[None, :])
    pupil = (radius <= optics.aperture_mm * 500).astype(np.float64)
    pupil *= display_pattern(display, pupil_n, optics.pupil_sample_um)
    channels = []
    for wavelength_nm in optics.wavelengths_nm:
        # grid spacing λ f / (M δ1) == fine_um  ->  M = λ f / (fine_um δ1)
        m = int(round(wavelength_nm * 1e-9 * optics.focal_mm * 1e-3 / (fine_um * 1e-6 * optics.pupil_sample_um * 1e-6)))
        field = np.zeros((m, m))
        start = m // 2 - pupil_n // 2
        field[start:start + pupil_n, start:start + pupil_n] = pupil
        intensity = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(field)))) ** 2
        half = optics.psf_size * optics.oversample // 2
        c = m // 2
        crop = intensity[c - half:c + half + 1, c - half:c + half + 1]
        k = optics.oversample
        sensor = crop.reshape(optics.psf_size, k, optics.psf_size, k).sum(axis=(1, 3))
        channels.append(sensor / sensor.sum())
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
    """min(Poisson(L·s) + read_std·N(0,1), full_well) / L, as in PROTOCOL.md §6."""
    electrons = rng.poisson(np.clip(signal, 0, None) * level) + read_std * rng.standard_normal(signal.shape)
    return np.minimum(electrons, full_well) / level


def capture(image: np.ndarray, display: Display, psf: np.ndarray, rng: np.random.Generator,
            noise_level: float | None = 10024.0) -> np.ndarray:
    """SDR UDC capture of a [0,1] HxWx3 image: clip(t_c · (x ⊛ k_c) + noise, 0, 1)."""
    blurred = convolve(image.astype(np.float64), psf) * np.asarray(display.transmittance)
    if noise_level is not None:
        blurred = poisson_gaussian(blurred, noise_level, rng)
    return np.clip(blurred, 0.0, 1.0)


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
    """PSFs of displays like `base` with other opening widths/heights (the basis for `psf_code`)."""
    return [simulate_psf(dataclasses.replace(base, name=f"{base.name}-{ox}x{oy}", open_x=ox, open_y=oy), optics)
            for ox in openings for oy in openings]


def metadata(display: Display, optics: Optics) -> dict:
    """Every simulation parameter, for the dataset's meta.json."""
    return {"display": dataclasses.asdict(display), "optics": dataclasses.asdict(optics),
            "opening_ratio": display.opening_ratio}
