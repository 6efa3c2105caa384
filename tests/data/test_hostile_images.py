"""Hostile and broken image files (issue 15): a decompression bomb (a ~100-byte PNG whose header claims
20000×20000 pixels) wherever udcbench reads an image — a dataset image, a `targeted:IMAGE` objective, a `--mask`,
a `udcbench synth --src` photo — and pixel data that is corrupt behind a valid header. Each is refused with one
`error:` line, exit code 2, no traceback, no warning, and nothing written to --out."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.data import load_dataset
from udcbench.data.readers import MAX_PIXELS, open_image, png_header
from udcbench.errors import DataError

runner = CliRunner()
FAST = ["--limit", "1", "--steps", "1"]
BOMB = ["20000×20000 pixels (400 Mpx)", "more than udcbench reads (limit 64 Mpx)"]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, width, height, idat: bytes):
    """An 8-bit RGB PNG with the given IHDR size and IDAT payload; every chunk's CRC is right."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def bomb_png(path, side=20000):
    """A decompression bomb: a valid header claiming side×side pixels, a tiny IDAT (never decoded)."""
    return write_png(path, side, side, zlib.compress(b"\x00" * 64))


def corrupt_png(path, side=32):
    """A valid header and valid CRCs around pixel data that is no zlib stream: only decoding finds it."""
    return write_png(path, side, side, b"\x78\x9c" + b"garbage!" * 16)


def bmp_header(path, side):
    """A BMP (not a PNG: Pillow's own size guard applies first) claiming side×side pixels."""
    header = struct.pack("<2sIHHI", b"BM", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 16,
                                                                       2835, 2835, 0, 0)
    path.write_bytes(header + bytes(16))
    return path


def photo(path, seed=0, size=32):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def pairs_folder(root, names=("a", "b")):
    for side in ("input", "gt"):
        (root / side).mkdir(parents=True)
        for index, name in enumerate(names):
            photo(root / side / f"{name}.png", index)
    return root


def refused(args, out, *fragments):
    """Run the CLI; assert one `error:` line holding every fragment, exit 2, no traceback or warning, no --out."""
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert result.exc_info[0] is SystemExit and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not [w for w in shown if "DecompressionBomb" in type(w.message).__name__ or "pixels" in str(w.message)]
    assert not out.exists(), f"{out} was written before the refusal"
    return lines[0]


# ---- decompression bombs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["input", "gt"])
def test_bomb_as_a_dataset_image(tmp_path, side):
    root = pairs_folder(tmp_path / "data")
    bomb_png(root / side / "b.png")
    with pytest.raises(DataError) as caught:
        load_dataset(str(root))
    assert all(fragment in str(caught.value) for fragment in BOMB) and "b.png" in str(caught.value)
    out = tmp_path / "out"
    refused(["run", "--steps", "1", "--data", root, "--out", out], out, *BOMB, f"{side}/b.png")
    refused(["run", "--steps", "1", "--data", f"pairs:{root}", "--out", out], out, *BOMB)


def test_bomb_as_a_targeted_objective_image(tmp_path):
    bomb = bomb_png(tmp_path / "target.png")
    out = tmp_path / "out"
    refused(["run", *FAST, "--objective", f"targeted:{bomb}", "--out", out], out, *BOMB, "target image")


def test_bomb_as_a_mask(tmp_path):
    bomb = bomb_png(tmp_path / "mask.png")
    out = tmp_path / "out"
    refused(["run", *FAST, "--mask", bomb, "--out", out], out, *BOMB, "mask image")


def test_bomb_in_another_format_is_caught_by_size_too(tmp_path):
    out = tmp_path / "out"
    huge = bmp_header(tmp_path / "huge.bmp", 20000)  # past Pillow's own limit: only the pixel count is known
    refused(["run", *FAST, "--mask", huge, "--out", out], out, "is 400 Mpx, more than udcbench reads (limit 64 Mpx)")
    between = bmp_header(tmp_path / "between.bmp", 9000)  # 81 Mpx: under Pillow's warning, over udcbench's limit
    refused(["run", *FAST, "--mask", between, "--out", out], out, "9000×9000 pixels (81 Mpx)")


def test_the_limit_is_inclusive_and_read_from_the_header(tmp_path):
    side = int(MAX_PIXELS ** 0.5)
    with open_image(bomb_png(tmp_path / "at.png", side)) as handle:  # exactly at the limit: opened, not decoded
        assert handle.size == (side, side)
    with pytest.raises(DataError, match="8001×8001 pixels"):
        open_image(bomb_png(tmp_path / "over.png", side + 1))


def test_bomb_as_a_synth_source_photo(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    photo(src / "fine.png", size=64)
    bomb_png(src / "huge.png")
    out = tmp_path / "out"
    refused(["synth", "--src", src, "--out", out, "--pixel-um", "8", "--aperture-mm", "2", "--psf-size", "15",
             "--size", "32"], out, *BOMB, "huge.png")


# ---- corrupt pixel data behind a valid header ----------------------------------------------------------------

def test_corrupt_pixel_data_in_a_dataset_fails_before_anything_is_written(tmp_path):
    root = pairs_folder(tmp_path / "data", names=("a", "b", "c"))
    corrupt_png(root / "gt" / "c.png")
    png_header(root / "gt" / "c.png")  # the header and the chunk CRCs pass: only decoding finds the damage
    with pytest.raises(DataError, match="c.png has corrupt pixel data"):
        load_dataset(str(root))
    load_dataset(str(root), limit=2)  # only the selected images are checked
    out = tmp_path / "out"
    refused(["run", "--steps", "1", "--data", root, "--out", out], out, "gt/c.png has corrupt pixel data",
            "replace the file")


def test_non_finite_npy_pixels_fail_before_anything_is_written(tmp_path):
    root = tmp_path / "data"
    for side in ("input", "gt"):
        (root / side).mkdir(parents=True)
        for index, name in enumerate(("a", "b")):
            np.save(root / side / f"{name}.npy", np.full((32, 32, 3), 0.25 * (index + 1), np.float32))
    broken = np.full((32, 32, 3), 0.5, np.float32)
    broken[3, 4, 1] = np.nan
    np.save(root / "input" / "b.npy", broken)
    out = tmp_path / "out"
    refused(["run", "--steps", "1", "--data", f"pairs:{root}", "--out", out], out, "b.npy contains NaN")


@pytest.mark.parametrize("option", ["--objective", "--mask"])
def test_corrupt_pixel_data_as_a_target_or_mask(tmp_path, option):
    bad = corrupt_png(tmp_path / "bad.png")
    value = f"targeted:{bad}" if option == "--objective" else bad
    out = tmp_path / "out"
    refused(["run", *FAST, option, value, "--out", out], out, "cannot decode", "bad.png", "valid PNG or JPEG")
