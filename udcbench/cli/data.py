"""`udcbench synth` and `udcbench psf`: the capture simulator from the command line."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.markup import escape

from udcbench.cli.common import console
from udcbench.errors import SpecError
from udcbench.outputs import check_file, check_folder


def _optics(focal_mm: float, aperture_mm: float, pixel_um: float, psf_size: Optional[int],
            wavelengths: Optional[str], spectrum: Optional[Path]):
    from udcbench.data import synth

    for name, value in (("--focal-mm", focal_mm), ("--aperture-mm", aperture_mm), ("--pixel-um", pixel_um)):
        if not value > 0:
            raise SpecError(f"{name} must be positive, got {value}")
    fields = {"focal_mm": focal_mm, "aperture_mm": aperture_mm, "sensor_pixel_um": pixel_um}
    if psf_size is not None:
        fields["psf_size"] = psf_size
    if wavelengths is not None:
        try:
            values = tuple(float(v) for v in wavelengths.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or not all(300 <= v <= 1100 for v in values):
            raise SpecError(f"--wavelengths takes three peak wavelengths in nm for R,G,B, e.g. 610,530,470; "
                            f"got {wavelengths!r}")
        fields["wavelengths_nm"] = values
    if spectrum is not None:
        fields["spectrum"] = synth.read_spectrum(spectrum)
    return dataclasses.replace(synth.Optics(), **fields)


# the display and optics options both commands share (one OptionInfo per option, reused as defaults)
DISPLAY = typer.Option("toled", "--display", help="toled, poled, or a mask PNG of one display cell (white = open).")
PITCH = typer.Option(None, "--pitch-um", help="Display cell pitch in µm (default: the preset's; 168 for a mask).")
OPENING = typer.Option(None, "--opening", help="Opening ratio of a preset's cell, in (0, 1].")
FOCAL = typer.Option(10.0, "--focal-mm", help="Focal length of the camera lens in mm.")
APERTURE = typer.Option(4.0, "--aperture-mm", help="Aperture diameter D in mm (the pupil the display covers).")
PIXEL = typer.Option(2.0, "--pixel-um", help="Sensor pixel pitch in µm (the PSF is box-filtered to it).")
PSF_SIZE = typer.Option(None, "--psf-size", help="Side of the simulated PSF in sensor pixels (odd); default: at "
                        "least 63, wide enough for the first diffraction orders.")
WAVELENGTHS = typer.Option(None, "--wavelengths", help="Peak wavelengths R,G,B in nm (default 610,530,470).")
SPECTRUM = typer.Option(None, "--spectrum", metavar="FILE", help="CSV nm,r,g,b: a spectral weighting per "
                        "channel instead of single wavelengths.")


def synth(
    display: str = DISPLAY,
    src: str = typer.Option(..., "--src", help="Folder of clean photos (PNG/JPEG; .npy HDR with --hdr), or "
                            "'skimage' for scikit-image's sample photos."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="New folder for the dataset."),
    size: int = typer.Option(256, "--size", help="Side of each square image in pixels."),
    noise: Optional[float] = typer.Option(None, "--noise", help="Photon level L of the Poisson-Gaussian noise "
                                          "(273 noisy … 10024 clean); default: no noise."),
    hdr: bool = typer.Option(False, "--hdr", help="Linear HDR captures clipped to [0,500], saved as .npy and "
                             "evaluated on x/(x+0.25) (like SYNTH and MIPI)."),
    layout: str = typer.Option("synth", "--layout", help="synth (DISCNet SYNTH folders) or mipi (MIPI 2022)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of photos in the test split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the noise (recorded in meta.json)."),
    pitch_um: Optional[float] = PITCH,
    opening: Optional[float] = OPENING,
    focal_mm: float = FOCAL, aperture_mm: float = APERTURE, pixel_um: float = PIXEL,
    psf_size: Optional[int] = PSF_SIZE, wavelengths: Optional[str] = WAVELENGTHS, spectrum: Optional[Path] = SPECTRUM,
) -> None:
    """Make a UDC dataset from clean photos with the physics simulator (PSF, blur, noise, HDR).

    Example: udcbench synth --display toled --src skimage -o data/toled-sk"""
    from udcbench.data.make import SynthConfig, fit_optics, make_dataset, resolve_display

    check_folder(out)
    optics = _optics(focal_mm, aperture_mm, pixel_um, psf_size, wavelengths, spectrum)
    optics = fit_optics(resolve_display(SynthConfig(display=display, pitch_um=pitch_um, opening=opening)),
                        optics, psf_size=psf_size is None)
    config = SynthConfig(display=display, size=size, noise=noise, hdr=hdr, layout=layout,
                         test_fraction=test_fraction, seed=seed, pitch_um=pitch_um, opening=opening)
    meta = make_dataset(src, out, config, optics,
                        progress=lambda done, total, name: console.print(escape(f"[{done}/{total}] {name}"),
                                                                         highlight=False))
    sim = meta["simulation"]
    fmt = "synth" if layout == "synth" else "mipi"
    console.print(escape(f"wrote {out}: {len(meta['splits']['train'])} train + {len(meta['splits']['test'])} "
                         f"test pairs ({meta['file_kind']}), display {sim['display']['name']} (opening ratio "
                         f"{sim['opening_ratio']:.3f}), PSF picture {out / 'psf.png'}"), highlight=False)
    console.print(escape(f"use it: udcbench run --data {fmt}:{out}"), highlight=False)


def psf_summary(psf: np.ndarray, display, optics) -> list[str]:
    """One line per channel: energy in the central pixel and within the Airy core, first-order position."""
    centre = psf.shape[-1] // 2
    lines = []
    for channel, name in enumerate("RGB"):
        order_px = optics.focal_mm * 1e-3 * _wavelength(optics, channel) * 1e-9 / (display.pitch_um * 1e-6) \
            / (optics.sensor_pixel_um * 1e-6)
        lines.append(f"{name}: centre pixel {psf[channel, centre, centre]:.1%} of the energy, first diffraction "
                     f"order at ±{order_px:.1f} px (f·λ/pitch)")
    return lines


def _wavelength(optics, channel: int) -> float:
    if optics.spectrum is None:
        return optics.wavelengths_nm[channel]
    pairs = optics.spectrum[channel]
    total = sum(weight for _, weight in pairs)
    return sum(nm * weight for nm, weight in pairs) / total


def psf(
    display: str = DISPLAY,
    out: Path = typer.Option(Path("psf.png"), "--out", "-o", metavar="FILE", help="PNG picture to write (log "
                             "scale); a .npy beside it holds the PSF × transmittance, (k, k, 3) float32 as "
                             "`synth`'s psf.npy."),
    pitch_um: Optional[float] = PITCH,
    opening: Optional[float] = OPENING,
    decades: int = typer.Option(4, "--decades", help="Orders of magnitude shown below the peak."),
    focal_mm: float = FOCAL, aperture_mm: float = APERTURE, pixel_um: float = PIXEL,
    psf_size: Optional[int] = PSF_SIZE, wavelengths: Optional[str] = WAVELENGTHS, spectrum: Optional[Path] = SPECTRUM,
) -> None:
    """Simulate a display's point spread function and draw it (log scale) so you can look at it.

    Example: udcbench psf --display toled -o psf.png"""
    from PIL import Image

    from udcbench.data import synth as simulator
    from udcbench.data.make import SynthConfig, fit_optics, resolve_display
    from udcbench.report.leaderboard import write_atomic

    check_file(out, "--out", (".png",))
    if decades < 1:
        raise SpecError(f"--decades must be at least 1, got {decades}; e.g. --decades 4")
    optics = _optics(focal_mm, aperture_mm, pixel_um, psf_size, wavelengths, spectrum)
    chosen = resolve_display(SynthConfig(display=display, pitch_um=pitch_um, opening=opening))
    optics = fit_optics(chosen, optics, psf_size=psf_size is None)
    kernel = simulator.simulate_psf(chosen, optics)
    picture = simulator.psf_picture(kernel, decades=decades)
    png, npy = io.BytesIO(), io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    np.save(npy, simulator.psf_file(kernel, chosen))  # (k, k, 3) × transmittance: the psf.npy `synth` writes
    out.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((out, png), (out.with_suffix(".npy"), npy)):
        write_atomic(target, data.getvalue())  # renamed into place; the umask's mode, not mkstemp's 0600
    console.print(f"wrote {out} ({picture.shape[1]}×{picture.shape[0]}, log scale, {decades} decades) and "
                  f"{out.with_suffix('.npy')}: display {chosen.name}, pitch {chosen.pitch_um:g} µm, opening "
                  f"ratio {chosen.opening_ratio:.3f}, f {optics.focal_mm:g} mm, D {optics.aperture_mm:g} mm, "
                  f"pixel {optics.sensor_pixel_um:g} µm", highlight=False)
    for line in psf_summary(kernel, chosen, optics):
        console.print("  " + line, highlight=False)


COMMANDS = {"synth": synth, "psf": psf}  # name -> function, in --help order
