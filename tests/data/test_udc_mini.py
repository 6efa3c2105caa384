import json

import numpy as np
import pytest
import torch
from PIL import Image

from udcbench.data import load_dataset
from udcbench.data import synth
from udcbench.data.mini import BUNDLED_DIR, build_udc_mini
from udcbench.errors import DataError


def test_udc_mini_has_the_promised_shape():
    test = load_dataset("udc-mini", split="test")
    train = load_dataset("udc-mini", split="train")
    assert len(test) >= 24 and len(train) >= 8
    sample = test[0]
    assert sample.degraded.shape == sample.gt.shape == (3, 128, 128)
    assert sample.degraded.dtype == torch.float32 and 0 <= sample.degraded.min() and sample.degraded.max() <= 1
    assert min(min(s.gt.shape[1:]) for s in train) >= 128
    assert len(load_dataset("udc-mini", limit=5)) == 5


def test_test_and_train_regions_do_not_overlap():
    meta = json.loads((BUNDLED_DIR / "meta.json").read_text())
    train = {r["photo"]: r for r in meta["splits"]["train"]}
    for record in meta["splits"]["test"]:
        assert record["left"] >= train[record["photo"]]["left"] + train[record["photo"]]["width"] + meta["gap"]


def test_degradation_is_real():
    psnrs = []
    for sample in load_dataset("udc-mini"):
        mse = (sample.degraded - sample.gt).pow(2).mean().item()
        psnrs.append(10 * np.log10(1 / mse))
    assert 15 < np.mean(psnrs) < 30


def test_regeneration_reproduces_the_bundled_pixels(tmp_path):
    build_udc_mini(tmp_path)
    for split in ("test", "train"):
        for path in sorted((BUNDLED_DIR / split / "input").glob("*.png")):
            for kind in ("input", "gt"):
                bundled = np.asarray(Image.open(BUNDLED_DIR / split / kind / path.name)).astype(int)
                fresh = np.asarray(Image.open(tmp_path / split / kind / path.name)).astype(int)
                assert np.abs(bundled - fresh).max() <= 1, (split, kind, path.name)
                assert (bundled == fresh).mean() > 0.999


def test_psf_channels_sum_to_one_and_orders_follow_the_grating_equation():
    display, optics = synth.DISPLAYS["mini"], synth.Optics()
    psf = synth.simulate_psf(display, optics)
    assert np.allclose(psf.sum(axis=(1, 2)), 1.0)
    centre = optics.psf_size // 2
    for channel, wavelength in enumerate(optics.wavelengths_nm):
        expected = optics.focal_mm * 1e-3 * wavelength * 1e-9 / (display.pitch_um * 1e-6) / (optics.sensor_pixel_um * 1e-6)
        row = psf[channel, centre, centre + 3:]  # beyond the central Airy core
        peak = 3 + int(np.argmax(row))
        assert abs(peak - expected) <= 1.0, (wavelength, peak, expected)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "input").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path)
    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    image.save(tmp_path / "input" / "a.png")
    image.save(tmp_path / "input" / "b.png")
    image.save(tmp_path / "gt" / "a.png")
    with pytest.raises(DataError, match="b.png"):
        load_dataset(tmp_path)
    (tmp_path / "gt" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(tmp_path)[1]


def test_folder_of_pairs_loads(tmp_path):
    for kind in ("input", "gt"):
        (tmp_path / "test" / kind).mkdir(parents=True)
        Image.fromarray(np.full((40, 48, 3), 100, np.uint8)).save(tmp_path / "test" / kind / "x.png")
    dataset = load_dataset(tmp_path)
    assert dataset.names() == ["x"] and dataset[0].gt.shape == (3, 40, 48)
