"""Official dataset layouts (synth, toled/poled, mipi, pairs): each test writes tiny files in the layout itself."""

import sqlite3
import struct
import sys
import types

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from typer.testing import CliRunner

from udcbench.api import prepare
from udcbench.cli import app
from udcbench.data import load_dataset
from udcbench.errors import DataError
from udcbench.spec import AttackSpec, DataSpec, ModelSpec, RunSpec

runner = CliRunner()
TONE_MAP = "x/(x+0.25)"


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def npy(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def hdr_image(seed, size=(32, 32)):
    image = np.random.default_rng(seed).uniform(0.0, 20.0, (*size, 3)).astype(np.float32)
    image[0, 0] = 0.25  # tone-maps to exactly 0.5
    image[0, 1] = -3.0  # negatives clip to 0
    return image


def sdr_image(seed, size=(32, 32)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_synth(root, names=("a", "b"), psfs=(1, 2), splits=("test",), family="ZTE_new", kind="npy"):
    for split in splits:
        for i, name in enumerate(names):
            if kind == "npy":
                npy(root / "GT" / split / f"{name}.npy", hdr_image(i))
            else:
                png(root / "GT" / split / f"{name}.png", sdr_image(i))
            for k in psfs:
                if kind == "npy":
                    npy(root / "input" / f"{family}_{k}" / split / f"{name}.npy", hdr_image(100 * k + i) * 0.5)
                else:
                    png(root / "input" / f"{family}_{k}" / split / f"{name}.png", sdr_image(100 * k + i))
    for k in psfs:
        psf = np.random.default_rng(k).uniform(size=(7, 7, 3)).astype(np.float32)
        npy(root / "PSF" / family / f"{family}_psf_{k}.npy", psf)
        npy(root / "PSF" / "kernel_code" / f"{family}_code_{k}.npy", np.arange(5, dtype=np.float32) + k)
    return root


def write_eccv(root, display="toled", splits=("val", "test"), count=3, size=(32, 32), train=2):
    stacks = {}
    for split in splits:
        for part, seed in (("display", 1), ("gt", 2)):
            stack = np.stack([sdr_image(seed * 10 + i, size) for i in range(count)])
            scipy.io.savemat(root / f"{display}_{split}_{part}.mat", {f"{split}_{part}": stack})
            stacks[split, part] = stack
    for i in range(train):
        for folder, seed in (("LQ", 1), ("HQ", 2)):
            png(root / "Train" / display.capitalize() / folder / f"{i + 1}.png", sdr_image(seed * 100 + i, size))
    return stacks


def write_mipi(root, counts=(("training", 2), ("validation", 1), ("test", 1)), extras=True, kind="npy"):
    for folder, count in counts:
        for i in range(count):
            for part, scale in (("input", 0.5), ("GT", 1.0)):
                if kind == "npy":
                    npy(root / folder / part / f"{i:03d}.npy", np.clip(hdr_image(i) * scale, None, 500))
                else:
                    png(root / folder / part / f"{i:03d}.png", sdr_image(i))
    if extras:
        npy(root / "psf.npy", np.full((5, 5, 3), 1 / 25, np.float32))
        npy(root / "psf_code.npy", np.arange(5, dtype=np.float32))


def write_pairs(input_dir, gt_dir, names=("x", "y"), suffix=".png", array=None):
    for i, name in enumerate(names):
        for folder in (input_dir, gt_dir):
            image = sdr_image(i) if array is None else array
            (png if suffix == ".png" else npy)(folder / f"{name}{suffix}", image)


def check_sample(sample, size=(32, 32)):
    for image in (sample.degraded, sample.gt):
        assert image.shape == (3, *size) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0


# ---- each format loads ------------------------------------------------------------------------------------------

def test_synth_hdr_samples_psf_extras_and_tone_mapping(tmp_path):
    write_synth(tmp_path)
    dataset = load_dataset(f"synth:{tmp_path}")
    assert dataset.names() == ["a_psf1", "b_psf1", "a_psf2", "b_psf2"]  # by PSF index, then name
    assert dataset.info.identity == f"synth:{tmp_path.resolve()}"
    assert dataset.info.tone_mapping == TONE_MAP and dataset.info.value_range == (0.0, 500.0)
    sample = dataset[2]
    check_sample(sample)
    assert sample.value_range == (0.0, 500.0) and sample.tone_mapping == TONE_MAP
    assert torch.allclose(sample.gt[:, 0, 0], torch.full((3,), 0.5))
    assert torch.equal(sample.gt[:, 0, 1], torch.zeros(3))
    raw = np.load(tmp_path / "GT" / "test" / "a.npy")
    assert torch.allclose(sample.gt, torch.from_numpy(np.clip(raw, 0, None) / (np.clip(raw, 0, None) + 0.25))
                          .permute(2, 0, 1).float())
    psf = np.load(tmp_path / "PSF" / "ZTE_new" / "ZTE_new_psf_2.npy")
    assert sample.extras["psf"].shape == (3, 7, 7) and sample.extras["psf"].dtype == torch.float32
    assert torch.equal(sample.extras["psf"], torch.from_numpy(psf.transpose(2, 0, 1).copy()))
    assert sample.extras["psf_code"].shape == (5, 1, 1)
    assert sample.extras["psf_code"].flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_synth_psf_selection_limit_and_splits(tmp_path):
    write_synth(tmp_path, psfs=(1, 2, 3), splits=("train", "test"))
    assert load_dataset(f"synth:{tmp_path}#psf=3").names() == ["a_psf3", "b_psf3"]
    pair = load_dataset(f"synth:{tmp_path}#psf=3,1")
    assert pair.names() == ["a_psf1", "b_psf1", "a_psf3", "b_psf3"]
    assert pair.info.identity == f"synth:{tmp_path.resolve()}#psf=1,3"  # canonical, so the run hash is too
    assert len(load_dataset(f"synth:{tmp_path}", limit=4)) == 4
    assert len(load_dataset(f"synth:{tmp_path}", split="train")) == 6
    assert load_dataset(f"synth:{tmp_path}#family=ZTE_new&psf=2").names() == ["a_psf2", "b_psf2"]
    with pytest.raises(DataError, match="has PSFs 1, 2, 3"):
        load_dataset(f"synth:{tmp_path}#psf=7")


def test_synth_png_sets_are_sdr_without_psf_files(tmp_path):
    write_synth(tmp_path, psfs=(1,), kind="png", family="toled")
    for path in (tmp_path / "PSF").rglob("*.npy"):
        path.unlink()
    dataset = load_dataset(f"synth:{tmp_path}")
    sample = dataset[0]
    check_sample(sample)
    assert sample.tone_mapping is None and sample.value_range == (0.0, 1.0) and sample.extras == {}
    raw = np.array(Image.open(tmp_path / "GT" / "test" / "a.png"))
    assert torch.allclose(sample.gt, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("display", ["toled", "poled"])
def test_eccv_mat_splits_and_train_pngs(tmp_path, display):
    stacks = write_eccv(tmp_path, display)
    test = load_dataset(f"{display}:{tmp_path}")
    assert test.info.split == "test" and test.names() == ["test_000", "test_001", "test_002"]
    assert test.info.identity == f"{display}:{tmp_path.resolve()}"
    for index in (0, 2):
        sample = test[index]
        check_sample(sample)
        assert sample.tone_mapping is None and sample.value_range == (0.0, 1.0)
        expected = torch.from_numpy(stacks["test", "gt"][index]).permute(2, 0, 1).float() / 255
        assert torch.allclose(sample.gt, expected)
    val = load_dataset(f"{display}:{tmp_path}", split="val", limit=2)
    assert val.names() == ["val_000", "val_001"]
    assert torch.allclose(val[1].degraded,
                          torch.from_numpy(stacks["val", "display"][1]).permute(2, 0, 1).float() / 255)
    train = load_dataset(f"{display}:{tmp_path}", split="train")
    assert train.names() == ["1", "2"]
    lq = np.array(Image.open(tmp_path / "Train" / display.capitalize() / "LQ" / "2.png"))
    assert torch.allclose(train[1].degraded, torch.from_numpy(lq).permute(2, 0, 1).float() / 255)


def test_eccv_train_folders_directly_under_root(tmp_path):
    write_pairs(tmp_path / "LQ", tmp_path / "HQ", names=("1", "2", "3"))
    dataset = load_dataset(f"toled:{tmp_path}", split="train", limit=2)
    assert dataset.names() == ["1", "2"]
    check_sample(dataset[0])


def test_mipi_splits_extras_and_tone_mapping(tmp_path):
    write_mipi(tmp_path)
    for split, count in (("train", 2), ("val", 1), ("test", 1), ("training", 2), ("validation", 1)):
        assert len(load_dataset(f"mipi:{tmp_path}", split=split)) == count, split
    dataset = load_dataset(f"mipi:{tmp_path}", split="train")
    assert dataset.names() == ["000", "001"]
    sample = dataset[0]
    check_sample(sample)
    assert sample.tone_mapping == TONE_MAP and sample.value_range == (0.0, 500.0)
    assert torch.allclose(sample.gt[:, 0, 0], torch.full((3,), 0.5))
    assert sample.extras["psf"].shape == (3, 5, 5) and sample.extras["psf_code"].shape == (5, 1, 1)
    assert len(load_dataset(f"mipi:{tmp_path}", split="train", limit=1)) == 1


def test_mipi_png_without_extras(tmp_path):
    write_mipi(tmp_path, counts=(("test", 2),), extras=False, kind="png")
    sample = load_dataset(f"mipi:{tmp_path}")[1]
    check_sample(sample)
    assert sample.tone_mapping is None and sample.extras == {}


def test_pairs_folders_npy_and_hdr(tmp_path):
    write_pairs(tmp_path / "test" / "input", tmp_path / "test" / "gt")
    dataset = load_dataset(f"pairs:{tmp_path}")
    assert dataset.names() == ["x", "y"] and dataset.info.identity == f"pairs:{tmp_path.resolve()}"
    check_sample(dataset[0])
    write_pairs(tmp_path / "in8", tmp_path / "gt8", suffix=".npy")  # uint8 .npy: / 255
    two = load_dataset(f"pairs:{tmp_path / 'in8'},{tmp_path / 'gt8'}")
    assert two.info.identity == f"pairs:{(tmp_path / 'in8').resolve()},{(tmp_path / 'gt8').resolve()}"
    assert torch.allclose(two[0].gt, torch.from_numpy(sdr_image(0)).permute(2, 0, 1).float() / 255)
    write_pairs(tmp_path / "inf", tmp_path / "gtf", suffix=".npy", array=np.full((32, 32, 3), 0.3, np.float32))
    assert torch.allclose(load_dataset(f"pairs:{tmp_path / 'inf'},{tmp_path / 'gtf'}")[0].gt, torch.tensor(0.3))
    write_pairs(tmp_path / "inh", tmp_path / "gth", suffix=".npy", array=hdr_image(0))
    folders = f"{tmp_path / 'inh'},{tmp_path / 'gth'}"
    with pytest.raises(DataError, match="#hdr"):  # HDR values without #hdr: a read-time error naming the file
        load_dataset(f"pairs:{folders}")[0]
    hdr = load_dataset(f"pairs:{folders}#hdr")
    assert hdr.info.identity.endswith("#hdr") and hdr[0].tone_mapping == TONE_MAP
    assert torch.allclose(hdr[0].gt[:, 0, 0], torch.full((3,), 0.5))
    with pytest.raises(DataError, match="is 8-bit"):
        load_dataset(f"pairs:{tmp_path}#hdr")


def test_identity_of_bare_folders_and_udc_mini_is_unchanged(tmp_path):
    write_pairs(tmp_path / "input", tmp_path / "gt")
    assert load_dataset(tmp_path).info.identity == str(tmp_path.resolve())
    assert load_dataset(str(tmp_path)).info.identity == str(tmp_path.resolve())
    assert load_dataset("udc-mini", limit=1).info.identity == "udc-mini"
    for data, expected in ((str(tmp_path), str(tmp_path.resolve())), ("udc-mini", "udc-mini")):
        job = prepare(RunSpec(model=ModelSpec("uformer"), attack=AttackSpec.of("pgd", steps=1),
                              data=DataSpec(data, "test", 1)))
        assert job.labels["data"] == expected


# ---- udcbench run on each layout ---------------------------------------------------------------------------------

def run_cli(data, out, *extra, model="uformer-nano"):
    return runner.invoke(app, ["run", "--model", model, "--attack", "pgd", "--steps", "1", "--limit", "1",
                               "--data", data, "--out", str(out), *extra])


def stored(out):
    with sqlite3.connect(out / "results.db") as conn:
        return conn.execute("SELECT image, data, split FROM results").fetchall()


@pytest.mark.parametrize("layout", ["toled-test", "poled-val", "toled-train", "synth", "mipi", "pairs"])
def test_run_on_each_layout(tmp_path, layout):
    root, out = tmp_path / "data", tmp_path / "out"
    root.mkdir()
    extra, model, image, split = [], "uformer-nano", None, "test"
    if layout.endswith(("test", "val", "train")):
        display, split = layout.split("-")
        write_eccv(root, display, count=2)
        extra = ["--split", split]
        data, image = f"{display}:{root}", "1" if split == "train" else f"{split}_000"
    elif layout == "synth":
        write_synth(root, psfs=(1, 2))
        data, model, image = f"synth:{root}#psf=2", "discnet-nano", "a_psf2"  # DISCNet needs each PSF's code
    elif layout == "mipi":
        write_mipi(root)
        data, image = f"mipi:{root}", "000"
    else:
        write_pairs(root / "in", root / "gt")
        data, image = f"pairs:{root / 'in'},{root / 'gt'}", "x"
    result = run_cli(data, out, *extra, model=model)
    assert result.exit_code == 0, result.output
    identity = load_dataset(data, split=split).info.identity
    assert stored(out) == [(image, identity, split)]


# ---- bad input: one clear line, nothing written --------------------------------------------------------------------

def v73(path):
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116, b" ") + bytes(8)
    path.write_bytes(header + struct.pack("<H", 0x0200) + b"IM" + bytes(512))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def eccv_wrong_keys(root):
    write_eccv(root, splits=("test",))
    scipy.io.savemat(root / "toled_test_gt.mat", {"gt": np.zeros((3, 32, 32, 3), np.uint8), "note": np.ones(2)})


def eccv_wrong_dtype(root):
    write_eccv(root, splits=("test",))
    scipy.io.savemat(root / "toled_test_gt.mat", {"test_gt": np.zeros((3, 32, 32, 3))})


def eccv_mismatch(root):
    write_eccv(root, splits=("test",))
    scipy.io.savemat(root / "toled_test_gt.mat", {"test_gt": np.zeros((3, 32, 40, 3), np.uint8)})


def synth_unmatched(root):
    write_synth(root, names=("a", "b", "c"))
    (root / "input" / "ZTE_new_2" / "test" / "b.npy").unlink()


def synth_two_families(root):
    write_synth(root)
    write_synth(root, family="Other")


def synth_mixed(root):
    write_synth(root, names=("a",))
    write_synth(root, names=("b",), kind="png")


def npy_wrong_shape(root):
    write_synth(root)
    np.save(root / "GT" / "test" / "a.npy", np.zeros((32, 32), np.float32))


def npy_wrong_dtype(root):
    write_synth(root)
    np.save(root / "GT" / "test" / "a.npy", np.zeros((32, 32, 3), np.int64))


def npy_truncated(root):
    write_synth(root)
    truncate(root / "input" / "ZTE_new_1" / "test" / "b.npy", 0.7)


def npy_garbage(root):
    write_synth(root)
    (root / "GT" / "test" / "a.npy").write_bytes(b"\x93NUMPY garbage")


def png_corrupt(root):
    write_pairs(root / "input", root / "gt")
    data = bytearray((root / "gt" / "y.png").read_bytes())
    data[60] ^= 0xFF  # inside the image data: the CRC no longer matches
    (root / "gt" / "y.png").write_bytes(bytes(data))


def size_mismatch(root):
    write_pairs(root / "input", root / "gt")
    png(root / "gt" / "y.png", sdr_image(0, (32, 48)))


def mipi_empty(root):
    write_mipi(root, counts=(("training", 1),))
    (root / "validation" / "input").mkdir(parents=True)
    (root / "validation" / "GT").mkdir()


def mipi_no_gt(root):
    write_mipi(root, counts=(("test", 1),))
    for path in (root / "test" / "GT").iterdir():
        path.unlink()
    (root / "test" / "GT").rmdir()


def psf_bad(root):
    write_synth(root)
    np.save(root / "PSF" / "ZTE_new" / "ZTE_new_psf_1.npy", np.zeros((4, 7, 7), np.float32))  # (3, 7, 7) is read


BAD = {
    "missing root": (lambda root: None, "toled:{root}/nope", "test", ["nope does not exist", "Train/Toled"]),
    "only val files": (lambda root: write_eccv(root, splits=("val",)), "toled:{root}", "test",
                       ["toled_test_display.mat", "toled_val_display.mat, toled_val_gt.mat", "--split val"]),
    "wrong mat keys": (eccv_wrong_keys, "toled:{root}", "test", ["'test_gt'", "gt (3, 32, 32, 3) uint8", "note"]),
    "wrong mat dtype": (eccv_wrong_dtype, "toled:{root}", "test", ["double (3, 32, 32, 3)", "expected uint8"]),
    "mat shape mismatch": (eccv_mismatch, "toled:{root}", "test", ["(3, 32, 40, 3)", "match one to one"]),
    "mat v7.3": (lambda root: (write_eccv(root, splits=("test",)), v73(root / "toled_test_gt.mat")),
                 "toled:{root}", "test", ["v7.3", "pip install -c constraints.txt h5py", "-v7"]),
    "mat truncated": (lambda root: (write_eccv(root, splits=("test",)), truncate(root / "toled_test_gt.mat")),
                      "toled:{root}", "test", ["toled_test_gt.mat", "truncated"]),
    "mat garbage": (lambda root: (write_eccv(root, splits=("test",)),
                                  (root / "toled_test_gt.mat").write_bytes(b"garbage" * 30)),
                    "toled:{root}", "test", ["toled_test_gt.mat", "corrupt"]),
    "no train folders": (lambda root: write_eccv(root, train=0), "poled:{root}", "train", ["Train/Poled/LQ"]),
    "unmatched names": (synth_unmatched, "synth:{root}", "test", ["1 files have no partner", "b.npy"]),
    "two families": (synth_two_families, "synth:{root}", "test", ["Other, ZTE_new", "#family="]),
    "mixed kinds": (synth_mixed, "synth:{root}", "test",
                    ["mixes .npy files (a.npy) with .png files (b.png)", "all one kind"]),
    "npy shape": (npy_wrong_shape, "synth:{root}", "test", ["a.npy holds a (32, 32) float32", "(H, W, 3)"]),
    "npy dtype": (npy_wrong_dtype, "synth:{root}", "test", ["int64", "(H, W, 3)"]),
    "npy truncated": (npy_truncated, "synth:{root}", "test", ["b.npy is corrupt or truncated", "needs"]),
    "npy garbage": (npy_garbage, "synth:{root}", "test", ["a.npy is corrupt", "header"]),
    "png corrupt": (png_corrupt, "{root}", "test", ["y.png is corrupt", "replace"]),
    "size mismatch": (size_mismatch, "pairs:{root}", "test", ["32×48", "aligned"]),
    "empty split": (mipi_empty, "mipi:{root}", "val", ["empty", "validation/input"]),
    "missing gt": (mipi_no_gt, "mipi:{root}", "test", ["test/GT does not exist", "{input,GT}"]),
    "unknown split": (write_mipi, "mipi:{root}", "dev", ["not 'dev'", "train, val and test"]),
    "synth split": (write_synth, "synth:{root}", "val", ["train and test"]),
    "bad psf": (psf_bad, "synth:{root}", "test", ["ZTE_new_psf_1.npy", "(h, w, 3)"]),
    "unknown psf": (write_synth, "synth:{root}#psf=4", "test", ["no PSF 4", "has PSFs 1, 2"]),
    "unknown option": (write_synth, "synth:{root}#colour=1", "test", ["no option 'colour'", "psf"]),
    "unknown format": (lambda root: None, "nosuch:{root}", "test", ["unknown dataset format 'nosuch'", "synth"]),
    "format without root": (lambda root: None, "toled", "test", ["toled:ROOT"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, case):
    setup, spec, split, messages = BAD[case]
    root = tmp_path / "data"
    root.mkdir()
    setup(root)
    spec = spec.format(root=root)
    with pytest.raises(DataError) as caught:
        load_dataset(spec, split=split)
    for message in messages:
        assert message in str(caught.value), (message, str(caught.value))
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", "--steps", "1", "--data", spec, "--split", split, "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and messages[0] in lines[0], result.output
    assert not out.exists()


def test_limit_below_one(tmp_path):
    write_mipi(tmp_path)
    with pytest.raises(DataError, match="--limit must be at least 1"):
        load_dataset(f"mipi:{tmp_path}", limit=0)


def test_mat_v73_reads_through_h5py_when_installed(tmp_path, monkeypatch):
    """h5py stores MATLAB's (N, H, W, 3) as (3, W, H, N); a stand-in h5py module checks the transposes."""
    stacks = {part: np.stack([sdr_image(seed + i, (32, 40)) for i in range(2)]) for part, seed in
              (("display", 0), ("gt", 9))}

    class Dataset:
        def __init__(self, array):
            self.array, self.shape, self.dtype = array, array.shape, array.dtype

        def __getitem__(self, index):
            return self.array[index]

    class File:
        def __init__(self, path, mode):
            part = "display" if "display" in str(path) else "gt"
            self.items_ = {f"test_{part}": Dataset(stacks[part].transpose(3, 2, 1, 0))}

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def items(self):
            return self.items_.items()

        def __getitem__(self, key):
            return self.items_[key]

    monkeypatch.setitem(sys.modules, "h5py", types.SimpleNamespace(File=File, Dataset=Dataset))
    for part in ("display", "gt"):
        v73(tmp_path / f"toled_test_{part}.mat")
    dataset = load_dataset(f"toled:{tmp_path}")
    assert dataset.names() == ["test_000", "test_001"]
    sample = dataset[1]
    check_sample(sample, (32, 40))
    assert torch.allclose(sample.gt, torch.from_numpy(stacks["gt"][1]).permute(2, 0, 1).float() / 255)
