"""Physics checks of the UDC simulator (udcbench.data.synth / displays): each test fails on a wrong simulator.

Small optics keep every FFT under ~1200² so the file runs in seconds on a CPU.
"""

import json

import numpy as np
import pytest
import scipy.signal
from PIL import Image

from udcbench.data import synth
from udcbench.data.displays import Display, display_pattern, load_display
from udcbench.errors import DataError, SpecError

OPEN = Display("open", pitch_um=168.0, open_x=1.0, open_y=1.0, transmittance=(1.0, 1.0, 1.0))
# f 10 mm, D 1 mm, 0.5 µm point-sampled pixels: Airy rings at 1.22 λ f / D = 7.4 µm (R) / 5.7 µm (B) = 15 / 11.5 px
AIRY_OPTICS = synth.Optics(aperture_mm=1.0, sensor_pixel_um=0.5, oversample=1, psf_size=61)
# f 10 mm, D 1 mm, 2 µm pixels, 4 µm pupil samples: T-OLED orders at 18 / 16 / 14 px, P-OLED ones at 48 / 42 / 37 px
GRATING_OPTICS = synth.Optics(aperture_mm=1.0, sensor_pixel_um=2.0, oversample=1, psf_size=121, pupil_sample_um=4.0)


def _parabolic(values: np.ndarray, i: int) -> float:
    """Sub-sample position of the extremum at index i from a parabola through i-1, i, i+1."""
    a, b, c = values[i - 1], values[i], values[i + 1]
    return i + 0.5 * (a - c) / (a - 2 * b + c)


def _first_dark_ring(channel: np.ndarray) -> float:
    """Radius (px) of the first minimum of the radially averaged profile, sub-pixel."""
    centre = channel.shape[0] // 2
    y, x = np.indices(channel.shape)
    radius = np.hypot(y - centre, x - centre)
    bins = np.floor(radius + 0.5).astype(int).ravel()
    profile = np.bincount(bins, channel.ravel()) / np.bincount(bins)
    i = 1
    while not (profile[i] < profile[i - 1] and profile[i] <= profile[i + 1]):
        i += 1
    return _parabolic(profile, i)


def _first_order(channel: np.ndarray, axis: int, expected_px: float) -> float:
    """Sub-pixel position (px from the centre) of the brightest peak along the +axis line within ±40 % of expected."""
    centre = channel.shape[0] // 2
    line = channel[centre, centre:] if axis == 1 else channel[centre:, centre]
    lo, hi = int(expected_px * 0.6), min(int(np.ceil(expected_px * 1.4)), len(line) - 2)
    i = lo + int(np.argmax(line[lo:hi + 1]))
    return _parabolic(line, i)


def _order_px(display: Display, optics: synth.Optics, wavelength_nm: float) -> float:
    return optics.focal_mm * 1e3 * wavelength_nm * 1e-3 / display.pitch_um / optics.sensor_pixel_um


def test_fully_open_rectangle_is_fully_open():
    fine = Display("fine", pitch_um=16.0, open_x=1.0, open_y=1.0, transmittance=(1.0, 1.0, 1.0))
    assert display_pattern(fine, 41, 8.0).min() == 1.0  # samples at the cell edge (phase -0.5) too
    assert OPEN.opening_ratio == 1.0


def test_open_display_gives_the_airy_pattern():
    psf = synth.simulate_psf(OPEN, AIRY_OPTICS)
    rings = {}
    for channel, wavelength in ((0, 610.0), (2, 470.0)):
        theory = 1.22 * wavelength * 1e-3 * AIRY_OPTICS.focal_mm / AIRY_OPTICS.aperture_mm / AIRY_OPTICS.sensor_pixel_um
        rings[wavelength] = _first_dark_ring(psf[channel])
        assert abs(rings[wavelength] - theory) <= 1.0, (wavelength, rings[wavelength], theory)  # 14.96 vs 14.88 (R)
    assert rings[610.0] / rings[470.0] == pytest.approx(610 / 470, rel=0.02)  # 1.303 vs 1.298
    centre = AIRY_OPTICS.psf_size // 2
    assert np.unravel_index(np.argmax(psf[1]), psf[1].shape) == (centre, centre)


def test_periodic_display_orders_follow_the_grating_equation():
    display = synth.DISPLAYS["toled"]
    psf = synth.simulate_psf(display, GRATING_OPTICS)
    for channel, wavelength in enumerate(GRATING_OPTICS.wavelengths_nm):
        expected = _order_px(display, GRATING_OPTICS, wavelength)  # 18.2 / 15.8 / 14.0 px
        for axis in (1, 0):
            found = _first_order(psf[channel], axis, expected)
            assert abs(found - expected) <= 1.0, (wavelength, axis, found, expected)


@pytest.mark.parametrize("name", ["toled", "poled", "mini", "mask", "spectral"])
def test_every_channel_sums_to_one(name, tmp_path):
    optics = synth.Optics(aperture_mm=1.0, sensor_pixel_um=2.0, oversample=3, psf_size=41)
    if name == "mask":
        cell = np.zeros((20, 20), np.uint8)
        cell[4:12, 2:17] = 255
        cell[14:18, 6:9] = 128
        Image.fromarray(cell).save(tmp_path / "cell.png")
        display = load_display(str(tmp_path / "cell.png"), pitch_um=120.0)
    elif name == "spectral":
        display = synth.DISPLAYS["toled"]
        optics = synth.Optics(aperture_mm=1.0, sensor_pixel_um=2.0, oversample=3, psf_size=41,
                              spectrum=(((600.0, 1.0), (620.0, 3.0)), ((530.0, 2.0),), ((450.0, 1.0), (480.0, 1.0))))
    else:
        display = synth.DISPLAYS[name]
    psf = synth.simulate_psf(display, optics)
    assert psf.shape == (3, 41, 41) and psf.dtype == np.float64 and psf.min() >= 0
    assert np.allclose(psf.sum(axis=(1, 2)), 1.0, rtol=0, atol=1e-12)


def _pasted(shape: tuple[int, int], points: list[tuple[int, int]], kernel: np.ndarray) -> np.ndarray:
    """Direct linear convolution of unit impulses at `points` (may lie outside the image) with a (3, k, k) kernel."""
    r = kernel.shape[-1] // 2
    canvas = np.zeros((shape[0] + 4 * r, shape[1] + 4 * r, 3))
    for y, x in points:
        canvas[y + r:y + 3 * r + 1, x + r:x + 3 * r + 1] += kernel.transpose(1, 2, 0)
    return canvas[2 * r:2 * r + shape[0], 2 * r:2 * r + shape[1]]


def test_convolving_a_point_source_reproduces_the_psf():
    psf = synth.simulate_psf(synth.DISPLAYS["toled"], synth.Optics(aperture_mm=1.0, sensor_pixel_um=1.0,
                                                                    oversample=1, psf_size=31))
    image = np.zeros((71, 80, 3))
    image[35, 40] = 1.0
    out = synth.convolve(image, psf)
    assert np.allclose(out[20:51, 25:56].transpose(2, 0, 1), psf, rtol=0, atol=1e-10)
    assert np.allclose(out, _pasted(image.shape[:2], [(35, 40)], psf), rtol=0, atol=1e-10)
    # an asymmetric kernel at an off-centre point: a flipped or shifted kernel fails here
    kernel = np.random.default_rng(0).random((3, 9, 9))
    kernel /= kernel.sum(axis=(1, 2), keepdims=True)
    image = np.zeros((30, 40, 3))
    image[10, 27] = 1.0
    out = synth.convolve(image, kernel)
    assert np.allclose(out[6:15, 23:32].transpose(2, 0, 1), kernel, rtol=0, atol=1e-12)
    assert np.allclose(out, _pasted(image.shape[:2], [(10, 27)], kernel), rtol=0, atol=1e-12)


def test_convolution_reflects_at_borders_and_never_wraps():
    """A point 2 px from the left border: a circular convolution of the image would wrap the kernel's left half onto
    the right border; `convolve` pads by reflection instead, so the output is the blur of the point plus that of its
    mirror image at column -2 (reflect: the edge pixel is not repeated), and the right border stays exactly dark."""
    kernel = np.random.default_rng(1).random((3, 11, 11))
    kernel /= kernel.sum(axis=(1, 2), keepdims=True)
    image = np.zeros((24, 30, 3))
    image[12, 2] = 1.0
    out = synth.convolve(image, kernel)
    assert np.allclose(out, _pasted(image.shape[:2], [(12, 2), (12, -2)], kernel), rtol=0, atol=1e-12)
    assert np.abs(out[:, 20:]).max() < 1e-14  # beyond the kernel radius from the point: nothing wrapped around
    circular = np.real(np.fft.ifft2(np.fft.fft2(image[..., 0]) * np.fft.fft2(np.roll(np.pad(
        kernel[0], ((0, 13), (0, 19))), (-5, -5), axis=(0, 1)))))
    assert circular[:, -3:].max() > 1e-3  # ...where a circular convolution would have put light


def test_mask_image_of_a_rectangle_matches_the_rectangle_display(tmp_path):
    # 168 µm cell drawn as 168 rows × 84 columns (1 µm × 2 µm pixels): a centred 0.5 × 0.25 opening
    cell = np.zeros((168, 84), np.uint8)
    cell[63:105, 21:63] = 255
    Image.fromarray(cell).save(tmp_path / "rect.png")
    masked = load_display(str(tmp_path / "rect.png"), transmittance=(0.9, 0.8, 0.7))
    rectangle = Display("rect", pitch_um=168.0, open_x=0.5, open_y=0.25, transmittance=(0.9, 0.8, 0.7))
    assert masked.pitch_um == 168.0 and masked.source == str(tmp_path / "rect.png") and masked.name == "rect"
    assert masked.opening_ratio == pytest.approx(rectangle.opening_ratio)
    optics = synth.Optics(aperture_mm=1.0, sensor_pixel_um=2.0, oversample=3, psf_size=41)
    np.testing.assert_array_equal(display_pattern(masked, 130, 8.0), display_pattern(rectangle, 130, 8.0))
    assert np.allclose(synth.simulate_psf(masked, optics), synth.simulate_psf(rectangle, optics), rtol=0, atol=1e-12)
    # the transposed cell really is another display: rows are y, columns x
    Image.fromarray(np.ascontiguousarray(np.pad(cell, ((0, 0), (42, 42))).T)).save(tmp_path / "tall.png")
    tall = load_display(str(tmp_path / "tall.png"))
    assert not np.allclose(synth.simulate_psf(tall, optics), synth.simulate_psf(rectangle, optics), atol=1e-6)


def test_spectral_psf():
    display = synth.DISPLAYS["toled"]
    base = dict(aperture_mm=1.0, sensor_pixel_um=1.0, oversample=1, psf_size=81)
    optics = synth.Optics(**base)
    single = synth.Optics(**base, spectrum=(((610.0, 1.0),), ((530.0, 2.5),), ((470.0, 0.1),)))
    assert hash(single) != hash(optics)
    narrow = synth.simulate_psf(display, optics)
    assert np.allclose(synth.simulate_psf(display, single), narrow, rtol=0, atol=1e-15)
    band = tuple((float(nm), 1.0) for nm in range(480, 581, 10))  # green channel 480-580 nm
    broad = synth.simulate_psf(display, synth.Optics(**base, spectrum=(((610.0, 1.0),), band, ((470.0, 1.0),))))
    np.testing.assert_array_equal(broad[0], narrow[0])
    expected = _order_px(display, optics, 530.0)  # 31.5 px
    centre = base["psf_size"] // 2
    lo, hi = centre + int(expected) - 5, centre + int(expected) + 6
    narrow_peak, broad_peak = narrow[1, centre, lo:hi].max(), broad[1, centre, lo:hi].max()
    assert broad_peak < 0.8 * narrow_peak, (broad_peak, narrow_peak)  # the first order is smeared radially
    assert broad[1].sum() == pytest.approx(1.0)


def test_read_spectrum(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("nm,r,g,b\n470,0,0.2,1\n530,0.1,1,0.2\n610,1,0.1,0\n")
    spectrum = synth.read_spectrum(path)
    assert spectrum == (((530.0, 0.1), (610.0, 1.0)), ((470.0, 0.2), (530.0, 1.0), (610.0, 0.1)),
                        ((470.0, 1.0), (530.0, 0.2)))
    hash(synth.Optics(spectrum=spectrum))
    for text, match in (("wl,r,g,b\n500,1,1,1\n", "header"), ("nm,r,g,b\n500,1,-1,1\n", "non-negative"),
                        ("nm,r,g,b\n500,1,0,1\n600,1,0,1\n", "channel G is all zero")):
        path.write_text(text)
        with pytest.raises(SpecError, match=match):
            synth.read_spectrum(path)
    with pytest.raises(SpecError, match="channel B"):
        synth.Optics(spectrum=(((500.0, 1.0),), ((500.0, 1.0),), ((500.0, 0.0),)))


def test_simulate_psf_rejects_bad_optics():
    display = synth.DISPLAYS["toled"]
    with pytest.raises(SpecError, match="odd"):
        synth.simulate_psf(display, synth.Optics(psf_size=64))
    with pytest.raises(SpecError, match="focal_mm"):
        synth.simulate_psf(display, synth.Optics(focal_mm=0.0))
    with pytest.raises(SpecError, match="FFT"):
        synth.simulate_psf(display, synth.Optics(sensor_pixel_um=0.1, oversample=9))
    with pytest.raises(SpecError, match="undersampled"):
        synth.simulate_psf(display, synth.Optics(sensor_pixel_um=8.0, oversample=1))


def _hand_sdr(image, display, psf, rng, level):
    r = psf.shape[-1] // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="reflect")
    blurred = np.stack([scipy.signal.fftconvolve(padded[..., c], psf[c], mode="valid") for c in range(3)], axis=-1)
    signal = np.clip(blurred * np.asarray(display.transmittance), 0, None)
    if level is not None:
        electrons = rng.poisson(signal * level) + 4.87 * rng.standard_normal(signal.shape)
        signal = np.minimum(electrons, 15506.0) / level
    return np.clip(signal, 0.0, 1.0)


def test_sdr_capture_matches_a_hand_computation():
    display = synth.DISPLAYS["toled"]
    psf = synth.simulate_psf(display, synth.Optics(aperture_mm=1.0, sensor_pixel_um=1.0, oversample=1, psf_size=21))
    image = np.random.default_rng(2).random((40, 50, 3))
    for level in (None, 273.0):
        out = synth.capture(image, display, psf, np.random.default_rng(3), level)
        hand = _hand_sdr(image, display, psf, np.random.default_rng(3), level)
        assert out.shape == image.shape and 0 <= out.min() and out.max() <= 1
        assert np.allclose(out, hand, rtol=0, atol=1e-9)


def test_hdr_capture():
    display = synth.DISPLAYS["toled"]
    psf = synth.simulate_psf(display, synth.Optics(aperture_mm=1.0, sensor_pixel_um=1.0, oversample=1, psf_size=21))
    t = np.asarray(display.transmittance)
    flat = np.full((48, 48, 3), 3.0)
    clean = synth.capture(flat, display, psf, None, None, hdr=True)
    assert np.allclose(clean, 3.0 * t, rtol=1e-12)  # linear, not clipped at 1 like SDR
    bright = synth.capture(np.full((32, 32, 3), 1000.0), display, psf, np.random.default_rng(0), 10024.0, hdr=True)
    assert np.all(bright == 500.0)  # clip_max binds
    assert synth.capture(flat, display, psf, None, None, hdr=True, clip_max=2.0).max() == 2.0
    # no full-well cap: SDR noise saturates at 15506 / L = 1.55, HDR does not
    hundred = synth.capture(np.full((32, 32, 3), 100.0), display, psf, np.random.default_rng(0), 10024.0, hdr=True)
    assert hundred.mean(axis=(0, 1)) == pytest.approx(100.0 * t, rel=1e-3)
    # Poisson-Gaussian in SDR units: variance s / L + (4.87 / L)^2 at L = 273, seeded and deterministic
    one = np.ones((64, 64, 3))
    a = synth.capture(one, display, psf, np.random.default_rng(7), 273.0, hdr=True)
    b = synth.capture(one, display, psf, np.random.default_rng(7), 273.0, hdr=True)
    c = synth.capture(one, display, psf, np.random.default_rng(8), 273.0, hdr=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    expected_std = np.sqrt(t / 273.0 + (4.87 / 273.0) ** 2)
    assert np.allclose(a.std(axis=(0, 1)), expected_std, rtol=0.05)
    assert 0 <= a.min() and a.max() <= 500.0
    with pytest.raises(SpecError, match="radiance"):
        synth.capture(-flat, display, psf, None, None, hdr=True)


def test_tone_map_and_sdr_to_linear():
    u = np.linspace(0, 254 / 255, 255)
    assert np.allclose(synth.tone_map(synth.sdr_to_linear(u)), u, rtol=0, atol=1e-12)
    assert synth.tone_map(np.array(0.25)) == 0.5
    top = synth.sdr_to_linear(np.array([1.0, 2.0]))
    assert np.all(top == pytest.approx(0.25 * 254.5 / 0.5)) and top.max() < 500.0  # ≈ 127: clip_max never binds
    assert synth.sdr_to_linear(np.array(-0.5)) == 0.0
    # pipeline photo -> radiance -> capture -> tone map: a flat photo u comes back as t·u / (t·u + 1 − u)
    display = synth.DISPLAYS["toled"]
    t = np.asarray(display.transmittance)
    psf = synth.simulate_psf(display, synth.Optics(aperture_mm=1.0, sensor_pixel_um=1.0, oversample=1, psf_size=21))
    photo = np.ones((40, 40, 3)) * np.array([0.3, 0.6, 0.9])
    shown = synth.tone_map(synth.capture(synth.sdr_to_linear(photo), display, psf, None, None, hdr=True))
    assert np.allclose(shown, t * photo / (t * photo + 1 - photo), rtol=0, atol=1e-12)
    noisy = synth.tone_map(synth.capture(synth.sdr_to_linear(photo), display, psf, np.random.default_rng(0), 4005.0,
                                         hdr=True))
    assert 0 <= noisy.min() and noisy.max() < 1 and np.abs(noisy - shown).mean() < 0.02


def test_psf_picture():
    picture_psf = np.zeros((3, 5, 5))
    picture_psf[:, 2, 2] = [1.0, 1e-2, 1e-5]
    picture = synth.psf_picture(picture_psf, decades=4, zoom=3)
    assert picture.dtype == np.uint8 and picture.shape == (15, 15, 3)
    assert picture[7, 7].tolist() == [255, 128, 0] and picture[0, 0].tolist() == [0, 0, 0]
    assert picture[6:9, 6:9, 0].min() == 255 and picture[5, 7, 0] == 0  # 3×3 nearest-neighbour blocks

    display, optics = synth.DISPLAYS["toled"], synth.Optics()
    psf = synth.simulate_psf(display, optics)
    zoom = 4
    picture = synth.psf_picture(psf, zoom=zoom)
    assert picture.dtype == np.uint8 and picture.shape == (63 * zoom, 63 * zoom, 3)
    total = picture.astype(int).sum(axis=2)
    centre = 31 * zoom
    assert total[centre:centre + zoom, centre:centre + zoom].min() == total.max()
    for channel, wavelength in enumerate(optics.wavelengths_nm):
        order = int(round(_order_px(display, optics, wavelength)))  # 18 / 16 / 14 px
        at_order = picture[centre, (31 + order) * zoom, channel]
        midway = picture[centre, (31 + order // 2) * zoom, channel]
        assert at_order > 0 and at_order > midway + 20, (wavelength, at_order, midway)


def test_load_display(tmp_path):
    assert load_display("toled") is synth.DISPLAYS["toled"]
    moved = load_display("toled", pitch_um=100.0)
    assert moved.pitch_um == 100.0 and moved.open_x == 0.58 and synth.DISPLAYS["toled"].pitch_um == 168.0
    with pytest.raises(SpecError) as error:
        load_display("oled-x")
    for word in ("oled-x", "toled", "poled", "mini", "or the path of a mask image (one unit cell, white = open)"):
        assert word in str(error.value)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(SpecError, match="all black"):
        load_display(str(tmp_path / "black.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):  # an unreadable file is a data error
        load_display(str(tmp_path / "broken.png"))
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[2:8, 3:7] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    display = load_display(str(tmp_path / "rgb.png"), pitch_um=50.0)
    assert display.mask.shape == (10, 10) and display.opening_ratio == pytest.approx(0.24)
    assert display.transmittance == (1.0, 1.0, 1.0) and not display.mask.flags.writeable
    meta = synth.metadata(display, synth.Optics(spectrum=(((600.0, 1.0),), ((530.0, 1.0),), ((470.0, 1.0),))))
    text = json.dumps(meta)
    assert "sha256" in text and "rgb.png" in text and meta["display"]["mask"]["shape"] == [10, 10]
    assert meta["optics"]["spectrum"][0] == [[600.0, 1.0]]
    assert "spectrum" not in synth.metadata(display, synth.Optics())["optics"]


def test_poled_transmits_less_and_diffracts_farther_than_toled():
    toled, poled = synth.DISPLAYS["toled"], synth.DISPLAYS["poled"]
    assert poled.opening_ratio < toled.opening_ratio
    assert all(p < t for p, t in zip(poled.transmittance, toled.transmittance))
    assert poled.transmittance[2] == min(poled.transmittance)  # yellowish: blue lowest
    assert poled.pitch_um < toled.pitch_um
    psf_t = synth.simulate_psf(toled, GRATING_OPTICS)
    psf_p = synth.simulate_psf(poled, GRATING_OPTICS)
    for channel, wavelength in enumerate(GRATING_OPTICS.wavelengths_nm):
        expected_t, expected_p = _order_px(toled, GRATING_OPTICS, wavelength), _order_px(poled, GRATING_OPTICS,
                                                                                         wavelength)
        found_t = _first_order(psf_t[channel], 1, expected_t)
        found_p = _first_order(psf_p[channel], 1, expected_p)  # 48.1 / 41.7 / 37.0 px
        assert abs(found_p - expected_p) <= 1.0, (wavelength, found_p, expected_p)
        assert found_p > 2 * found_t
