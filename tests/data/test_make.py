"""`udcbench synth` / `udcbench psf` and `udcbench.data.make`: layouts, reproducibility, bad input, atomicity."""

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.data import load_dataset, make, synth
from udcbench.data.make import SynthConfig, make_dataset
from udcbench.data.readers import inspect_psf, read_psf
from udcbench.errors import DataError

runner = CliRunner()
# small optics so each PSF is a ~500² FFT: 8 µm pixels behind a 2 mm aperture, a 15-px PSF
FAST = ["--pixel-um", "8", "--aperture-mm", "2", "--psf-size", "15", "--size", "32"]
FAST_OPTICS = synth.Optics(sensor_pixel_um=8.0, aperture_mm=2.0, psf_size=15)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def photos(tmp_path):
    """Four smooth 8-bit photos of different sizes and one grayscale one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(60, 80), (72, 48), (50, 50), (90, 64)]):
        y, x = np.mgrid[0:h, 0:w]
        base = 0.5 + 0.4 * np.sin(x / (3 + i)) * np.cos(y / 5)
        image = np.stack([base, base[::-1], 1 - base], axis=-1) + 0.02 * rng.standard_normal((h, w, 3))
        Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) % 256).astype(np.uint8)).save(folder / "gray.jpg")
    return folder


def single_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_synth_writes_the_synth_layout_and_it_loads_back(tmp_path, photos):
    out = tmp_path / "set"
    result = invoke("synth", "--display", "toled", "--src", photos, "--out", out, "--noise", "4005", *FAST)
    assert result.exit_code == 0, result.output
    assert f"udcbench run --data synth:{out}" in result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["test"] and len(meta["splits"]["train"]) + len(meta["splits"]["test"]) == 5
    assert meta["config"]["noise"] == 4005 and meta["simulation"]["optics"]["sensor_pixel_um"] == 8.0
    assert meta["simulation"]["display"]["pitch_um"] == 168.0 and meta["layout"] == "synth"
    for split in ("train", "test"):
        for name in meta["splits"][split]:
            assert (out / "GT" / split / f"{name}.png").is_file()
            assert (out / "input" / "toled_1" / split / f"{name}.png").is_file()
    kernel = np.load(out / "PSF" / "toled" / "toled_psf_1.npy")
    assert kernel.shape == (15, 15, 3) and kernel.dtype == np.float32
    # the saved kernel is the PSF × transmittance: channel sums are the display's transmittances
    assert np.allclose(kernel.sum(axis=(0, 1)), synth.DISPLAYS["toled"].transmittance, atol=1e-5)
    assert np.array_equal(np.load(out / "psf.npy"), kernel)
    assert np.load(out / "PSF" / "kernel_code" / "toled_code_1.npy").shape == (5,)
    picture = np.asarray(Image.open(out / "psf.png"))
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.max() == 255
    dataset = load_dataset(f"synth:{out}", split="test")
    sample = dataset[0]
    assert sample.degraded.shape == sample.gt.shape == (3, 32, 32)
    assert sample.tone_mapping is None and "psf_code" in sample.extras
    assert 0.001 < (sample.degraded - sample.gt).abs().mean() < 0.3  # degraded, but still the same picture


def test_hdr_and_the_mipi_layout(tmp_path, photos):
    out = tmp_path / "hdr"
    result = invoke("synth", "--src", photos, "--out", out, "--hdr", "--layout", "mipi", *FAST)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tone_mapping"] == "x/(x+0.25)" and meta["value_range"] == [0.0, 500.0]
    name = next(n for n in meta["splits"]["train"] if n.startswith("photo"))
    degraded = np.load(out / "training" / "input" / f"{name}.npy")
    gt = np.load(out / "training" / "GT" / f"{name}.npy")
    assert degraded.dtype == gt.dtype == np.float32 and degraded.shape == gt.shape == (32, 32, 3)
    assert 0 <= degraded.min() and degraded.max() <= 500 and gt.max() > 1  # linear radiance, not [0,1]
    # the 8-bit photo became radiance by inverting the evaluation tone map
    source = np.asarray(Image.open(photos / f"{name}.png").convert("RGB"))
    assert np.allclose(synth.tone_map(gt).max(), min(source.max(), 254.5) / 255, atol=0.02)
    sample = next(s for s in load_dataset(f"mipi:{out}", split="train") if s.name == name)
    assert sample.tone_mapping == "x/(x+0.25)" and sample.value_range == (0.0, 500.0)
    assert float(sample.gt.max()) < 1
    assert np.allclose(sample.gt.permute(1, 2, 0).numpy(), synth.tone_map(gt), atol=1e-6)


def test_the_same_seed_writes_the_same_files_and_another_seed_other_noise(tmp_path, photos):
    config = SynthConfig(size=32, noise=273.0, seed=5)
    first = make_dataset(photos, tmp_path / "a", config, FAST_OPTICS)
    second = make_dataset(photos, tmp_path / "b", config, FAST_OPTICS)
    other = make_dataset(photos, tmp_path / "c", SynthConfig(size=32, noise=273.0, seed=6), FAST_OPTICS)
    assert first["splits"] == second["splits"]
    for path in sorted((tmp_path / "a").rglob("*.png")) + sorted((tmp_path / "a").rglob("*.npy")):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    name = first["splits"]["train"][0]
    split = "train" if name in other["splits"]["train"] else "test"
    a = np.asarray(Image.open(tmp_path / "a" / "input" / "toled_1" / "train" / f"{name}.png"), dtype=float)
    c = np.asarray(Image.open(tmp_path / "c" / "input" / "toled_1" / split / f"{name}.png"), dtype=float)
    assert 0 < np.abs(a - c).mean() < 20  # same picture, other noise draw


def test_capture_matches_the_formation_model_without_noise(tmp_path, photos):
    make_dataset(photos, tmp_path / "s", SynthConfig(size=32, test_fraction=0.0), FAST_OPTICS)
    display = synth.DISPLAYS["toled"]
    psf = synth.simulate_psf(display, FAST_OPTICS)
    margin = FAST_OPTICS.psf_size // 2
    source = np.asarray(Image.open(photos / "photo2.png"))  # 50×50, short side 50 → resized to 46
    fitted = make._fit(source, 32 + 2 * margin, False).astype(np.float64) / 255
    expected = np.clip(synth.convolve(fitted, psf) * np.asarray(display.transmittance), 0, 1)
    expected = expected[margin:-margin, margin:-margin]
    written = np.asarray(Image.open(tmp_path / "s" / "input" / "toled_1" / "train" / "photo2.png")) / 255
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-9


def test_psf_command_draws_the_psf(tmp_path):
    out = tmp_path / "pics" / "psf.png"
    result = invoke("psf", "--display", "poled", "--out", out, "--pixel-um", "4", "--psf-size", "41")
    assert result.exit_code == 0, result.output
    assert "first diffraction order" in result.output
    picture = np.asarray(Image.open(out))
    assert picture.shape == (41 * 4, 41 * 4, 3)
    kernel = np.load(out.with_suffix(".npy"))  # (k, k, 3) PSF × transmittance, as synth's psf.npy
    assert kernel.shape == (41, 41, 3) and kernel.dtype == np.float32
    assert np.allclose(kernel.sum(axis=(0, 1)), synth.DISPLAYS["poled"].transmittance, atol=1e-5)
    centre = picture.shape[0] // 2
    assert picture[centre, centre].max() == 255


def test_a_mask_image_is_a_display(tmp_path):
    cell = np.zeros((40, 40), np.uint8)
    cell[10:30, 5:35] = 255
    Image.fromarray(cell).save(tmp_path / "cell.png")
    out = tmp_path / "mask.png"
    result = invoke("psf", "--display", tmp_path / "cell.png", "--pitch-um", "120", "--out", out, "--pixel-um", "4",
                    "--psf-size", "31")
    assert result.exit_code == 0, result.output
    assert "pitch 120 µm" in result.output and "opening ratio 0.375" in result.output


@pytest.mark.parametrize("args, fragments", [
    (["--src", "{tmp}/nowhere"], ["does not exist", "--src skimage"]),
    (["--src", "{tmp}/empty"], ["holds no photos"]),
    (["--src", "{tmp}/corrupt"], ["cannot read photo", "bad.png"]),
    (["--src", "{photos}", "--display", "oled9"], ["toled", "poled", "mask image"]),
    (["--src", "{photos}", "--noise", "-3"], ["--noise"]),
    (["--src", "{photos}", "--layout", "div2k"], ["--layout", "synth, mipi"]),
    (["--src", "{photos}", "--opening", "1.5"], ["--opening"]),
    (["--src", "{photos}", "--wavelengths", "610,530"], ["--wavelengths"]),
    (["--src", "{hdr}"], ["--hdr"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, photos, args, fragments):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "hdr").mkdir()
    np.save(tmp_path / "hdr" / "scene.npy", np.ones((40, 40, 3), np.float32))
    args = [a.format(tmp=tmp_path, photos=photos, hdr=tmp_path / "hdr") for a in args]
    out = tmp_path / "out"
    single_line_error(invoke("synth", *args, "--out", out, *FAST), *fragments)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_an_existing_dataset_is_never_overwritten(tmp_path, photos):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    single_line_error(invoke("synth", "--src", photos, "--out", out, *FAST), "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failure_midway_leaves_nothing_behind(tmp_path, photos, monkeypatch):
    calls = []
    real = synth.capture

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "capture", failing)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(photos, tmp_path / "out", SynthConfig(size=32), FAST_OPTICS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.fixture
def umask():
    """set(mask) for this test; the process's umask is restored after."""
    previous = []

    def set_mask(mask: int) -> None:
        previous.append(os.umask(mask))

    yield set_mask
    if previous:
        os.umask(previous[0])


def modes(root: Path) -> dict[str, set[int]]:
    paths = [root, *root.rglob("*")]
    return {"dirs": {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()},
            "files": {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()}}


def test_synth_and_psf_write_with_the_umask_modes_as_mkdir_would(tmp_path, photos, umask):
    umask(0o027)  # neither mkdtemp's 0700 nor a fixed 0755: the modes must follow the umask
    out = tmp_path / "set"
    assert invoke("synth", "--src", photos, "--out", out, *FAST).exit_code == 0
    assert modes(out) == {"dirs": {0o750}, "files": {0o640}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "set"]  # the staging folder is gone
    umask(0o022)
    picture = tmp_path / "pics" / "psf.png"
    assert invoke("psf", "--out", picture, "--pixel-um", "8", "--aperture-mm", "2", "--psf-size", "15").exit_code == 0
    assert modes(picture.parent) == {"dirs": {0o755}, "files": {0o644}}  # not mkstemp's 0600
    assert sorted(p.name for p in picture.parent.iterdir()) == ["psf.npy", "psf.png"]


def test_psf_and_synth_write_the_same_psf_file_and_both_layouts_load_the_same(tmp_path, photos):
    out = tmp_path / "set"
    assert invoke("synth", "--display", "poled", "--src", photos, "--out", out, *FAST).exit_code == 0
    picture = tmp_path / "psf.png"
    result = invoke("psf", "--display", "poled", "--out", picture, "--pixel-um", "8", "--aperture-mm", "2",
                    "--psf-size", "15")
    assert result.exit_code == 0, result.output
    written = np.load(picture.with_suffix(".npy"))
    assert written.shape == (15, 15, 3) and written.dtype == np.float32
    assert np.array_equal(written, np.load(out / "psf.npy"))
    assert np.array_equal(written, np.load(out / "PSF" / "poled" / "poled_psf_1.npy"))
    # an older (3, k, k) file (`udcbench psf` before, the bundled udc-mini PSF) is read by its shape
    old = tmp_path / "old.npy"
    np.save(old, written.transpose(2, 0, 1))
    for path in (old, out / "psf.npy"):
        inspect_psf(path)
        assert torch.equal(read_psf(path), torch.from_numpy(written.transpose(2, 0, 1).copy()))
    np.save(old, np.zeros((4, 5, 6), np.float32))
    with pytest.raises(DataError, match=r"\(h, w, 3\) array \(or \(3, h, w\)\)"):
        inspect_psf(old)
    bundled = load_dataset("udc-mini", limit=1)[0].extras["psf"]
    assert bundled.shape == (3, 63, 63)
    assert np.allclose(bundled.sum(dim=(1, 2)), synth.DISPLAYS["mini"].transmittance, atol=1e-5)


def test_psf_rejects_a_non_png_target(tmp_path):
    single_line_error(invoke("psf", "--out", tmp_path / "psf.jpg"), ".png")
    assert not (tmp_path / "psf.jpg").exists()


def test_udcbench_runs_on_a_synthesised_set(tmp_path, photos):
    data = tmp_path / "set"
    assert invoke("synth", "--src", photos, "--out", data, *FAST).exit_code == 0
    out = tmp_path / "run"
    result = invoke("run", "--model", "uformer-nano", "--attack", "pgd", "--steps", "1", "--limit", "1",
                    "--data", f"synth:{data}", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "results.db").is_file()


def test_a_model_needing_the_psf_code_is_refused_before_anything_is_written(tmp_path, photos):
    data = tmp_path / "set"
    assert invoke("synth", "--src", photos, "--out", data, *FAST).exit_code == 0
    for path in (data / "PSF" / "kernel_code").iterdir():
        path.unlink()
    out = tmp_path / "run"
    result = invoke("run", "--model", "discnet-nano", "--attack", "pgd", "--steps", "1", "--limit", "1",
                    "--data", f"synth:{data}", "--out", out)
    single_line_error(result, "discnet-nano needs psf_code", "kernel_code")
    assert not out.exists()


def test_a_spectral_weighting_from_csv(tmp_path):
    csv = tmp_path / "camera.csv"
    csv.write_text("nm,r,g,b\n460,0,0.1,1\n530,0.1,1,0.1\n620,1,0.1,0\n")
    out = tmp_path / "spectral.png"
    result = invoke("psf", "--spectrum", csv, "--out", out, "--pixel-um", "4", "--psf-size", "31")
    assert result.exit_code == 0, result.output
    # the order position printed uses each channel's weighted mean wavelength: R (620+53)/1.1 ≈ 611.8 nm
    expected = 10e-3 * (0.1 * 530 + 620) / 1.1 * 1e-9 / 168e-6 / 4e-6
    assert "R: centre pixel" in result.output and f"±{expected:.1f} px" in result.output
    default = invoke("psf", "--out", tmp_path / "plain.png", "--pixel-um", "4", "--psf-size", "31")
    assert default.exit_code == 0
    assert not np.array_equal(np.load(out.with_suffix(".npy")), np.load(tmp_path / "plain.npy"))
    bad = tmp_path / "bad.csv"
    bad.write_text("wavelength,red\n500,1\n")
    single_line_error(invoke("psf", "--spectrum", bad, "--out", tmp_path / "x.png"), "nm,r,g,b")
    assert not (tmp_path / "x.png").exists()
