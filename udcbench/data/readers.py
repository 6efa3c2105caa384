"""Reading dataset files: cheap checks while a dataset is built, decoding when a sample is read.

The `inspect_*` functions read headers only (PNG chunk structure and CRCs, .npy headers and file sizes, .mat
variable headers), so a bad file is reported before a run creates anything, without decoding pixels;
`check_pixels` then decodes a checked file once and throws the pixels away (what `inspect_pairs` does for every
image of a dataset, so corrupt pixel data too is reported before a run writes anything). The `read_*`
functions decode one file into a float32 tensor in [0, 1]; they raise `DataError` naming the file when one that
passed the checks still cannot be decoded.

Image files are opened with Pillow through `open_image` (dataset PNGs here; `targeted:IMAGE` and `--mask` images
in attacks/objectives.py through `read_rgb`), which refuses an image larger than MAX_PIXELS from its header,
before any pixel is decoded (a decompression bomb: a small file claiming 20000×20000 pixels).

HDR sources (float .npy with linear radiance, e.g. DISCNet SYNTH and MIPI in [0, 500]) are tone-mapped with
u = x/(x+0.25) after clipping negatives to 0, which is how those benchmarks are evaluated.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch
from numpy.lib import format as npy_format
from PIL import Image

from udcbench.data.tonemap import tone_map
from udcbench.errors import DataError

HDR_RANGE = (0.0, 500.0)
IMAGE_SUFFIXES = (".png", ".npy")
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")
SDR_TOLERANCE = 1e-3  # float SDR arrays may overshoot [0, 1] by rounding; they are clipped
# the largest image udcbench reads: 64 Mpx (8000×8000; 4K UDC captures are 8-12 Mpx, the study's images 0.64 Mpx).
# Pillow's own guard warns above 89 Mpx and fails above 179 Mpx; udcbench checks first, from the header.
MAX_PIXELS = 64_000_000
# what Pillow raises on a malformed file (beyond OSError, which includes UnidentifiedImageError)
PIL_ERRORS = (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, zlib.error)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}".removesuffix(".0")


def too_large(path, what: str, pixels: int, size: tuple[int, int] | None = None) -> DataError:
    """The error for an image over MAX_PIXELS; `size` (width, height) when known."""
    dims = f"{size[0]}×{size[1]} pixels ({_megapixels(pixels)} Mpx)" if size else f"{_megapixels(pixels)} Mpx"
    return DataError(f"{what} {path} is {dims}, more than udcbench reads (limit {_megapixels(MAX_PIXELS)} Mpx); "
                     "downscale or crop it (or replace the file if it is not really that large)")


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without Pillow; None when the file is not a PNG."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def open_image(path, what: str = "image", fix: str = "replace the file") -> Image.Image:
    """Pillow's lazy Image.open of an image file (use it in a `with` block), once its header shows at most
    MAX_PIXELS pixels. Raises DataError naming the file (`what`, e.g. 'target image', and `fix`, what to do)
    when it is too large or cannot be identified."""
    size = _png_size(Path(path))
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise too_large(path, what, size[0] * size[1], size)
    try:
        with warnings.catch_warnings():  # Pillow's warning between its two limits: udcbench's limit is lower
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(path)
    except Image.DecompressionBombError as error:  # not a PNG: Pillow's limit, only the pixel count is known
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise too_large(path, what, int(found[1]) if found else MAX_PIXELS + 1) from None
    except PIL_ERRORS as error:
        raise DataError(f"cannot read {what} {path} ({error}); {fix}") from None
    width, height = handle.size
    if width * height > MAX_PIXELS:
        handle.close()
        raise too_large(path, what, width * height, (width, height))
    return handle


def read_rgb(path, what: str = "image", fix: str = "replace the file") -> np.ndarray:
    """An image file decoded to (H, W, 3) uint8 RGB (see open_image); DataError when it cannot be decoded."""
    with open_image(path, what, fix) as handle:
        try:
            return np.asarray(handle.convert("RGB") if handle.mode != "RGB" else handle)
        except PIL_ERRORS as error:
            raise DataError(f"cannot decode {what} {path} ({error}); {fix}") from None


@dataclass(frozen=True)
class ImageHeader:
    """What the header of one image file says: enough to pair and check files without decoding them."""

    path: Path
    kind: str  # "png" or "npy"
    height: int
    width: int
    dtype: str  # "uint8" or a float dtype name

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, checking that the file holds exactly the bytes the header promises."""
    try:
        with open(path, "rb") as handle:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
            offset = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise DataError(f"{path} is corrupt: its .npy header cannot be read ({error}); replace the file") from None
    if dtype.hasobject:
        raise DataError(f"{path} holds Python objects ({dtype}); save the image as a plain numeric array")
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(f"{path} is corrupt or truncated: {actual} bytes, but its header ({shape} {dtype}) needs "
                        f"{expected}; replace the file")
    return tuple(int(n) for n in shape), dtype


def png_header(path: Path) -> ImageHeader:
    with open_image(path, "image", "it is corrupt or truncated — replace the file") as handle:
        width, height, mode = handle.size[0], handle.size[1], handle.mode
        try:
            handle.verify()  # chunk structure and CRCs, without decoding the pixels
        except PIL_ERRORS as error:
            raise DataError(f"{path} is corrupt or truncated ({error}); replace the file") from None
    if mode not in EIGHT_BIT_MODES:
        raise DataError(f"{path} is a {mode} image; udcbench reads 8-bit PNGs — convert it to 8-bit RGB")
    return ImageHeader(path, "png", height, width, "uint8")


def inspect_image(path: Path) -> ImageHeader:
    """Check one image file (.png or .npy (H, W, 3) uint8/float) from its header; no pixels are decoded."""
    if path.suffix.lower() == ".png":
        return png_header(path)
    shape, dtype = npy_header(path)
    if len(shape) != 3 or shape[2] != 3 or not (dtype == np.uint8 or dtype.kind == "f"):
        raise DataError(f"{path} holds a {shape} {dtype} array; udcbench reads images as (H, W, 3) float "
                        "(linear HDR or [0,1]) or uint8 arrays — re-save it in that shape")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise too_large(path, "image", shape[0] * shape[1], (shape[1], shape[0]))
    return ImageHeader(path, "npy", shape[0], shape[1], "uint8" if dtype == np.uint8 else dtype.name)


def read_png(path: Path) -> torch.Tensor:
    array = read_rgb(path, "image", "replace the corrupt file")
    if array.dtype != np.uint8:
        raise DataError(f"{path} is {array.dtype}; udcbench reads 8-bit RGB PNGs here — convert it")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def check_values(array: np.ndarray, source: str, hdr: bool) -> None:
    """What to_tensor checks of an array's values: shape, dtype, finite floats, SDR floats in [0, 1]."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"{source} holds a {array.shape} array; expected (H, W, 3) — re-save it in that shape")
    if array.dtype == np.uint8:
        return
    if array.dtype.kind != "f":
        raise DataError(f"{source} is {array.dtype}; udcbench reads uint8 or float images — convert it")
    if not np.isfinite(array).all():
        raise DataError(f"{source} contains NaN or infinite values; fix or replace the file")
    if not hdr and array.size:
        low, high = float(array.min()), float(array.max())
        if low < -SDR_TOLERANCE or high > 1.0 + SDR_TOLERANCE:
            raise DataError(f"{source} holds values in [{low:g}, {high:g}], outside [0, 1]; if it is linear "
                            "HDR, add the option #hdr (e.g. pairs:ROOT#hdr) to tone-map it with x/(x+0.25)")


def to_tensor(array: np.ndarray, source: str, hdr: bool) -> torch.Tensor:
    """(H, W, 3) uint8 or float array -> (3, H, W) float32 in [0, 1]: uint8 / 255, float HDR tone-mapped,
    float SDR checked to lie in [0, 1]."""
    check_values(array, source, hdr)
    if array.dtype == np.uint8:
        image = array.astype(np.float32) / 255.0
    elif hdr:
        image = tone_map(np.clip(array.astype(np.float64), 0.0, None))  # negatives clipped to 0 first
    else:
        image = np.clip(array, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}; replace the corrupt file") from None


def read_image(header: ImageHeader, hdr: bool) -> torch.Tensor:
    """Decode one checked image file into (3, H, W) float32 in [0, 1]."""
    if header.kind == "png":
        return read_png(header.path)
    return to_tensor(load_npy(header.path), str(header.path), hdr)


def check_pixels(header: ImageHeader, hdr: bool) -> None:
    """Decode one checked image file and discard the pixels: DataError when its pixel data is corrupt (a PNG
    whose compressed stream is broken though its chunks' CRCs match) or, for .npy, holds values read_image would
    refuse. About 15 ms per 800×800 PNG."""
    if header.kind == "png":
        with open_image(header.path, "image", "replace the file") as handle:
            try:
                handle.load()
            except PIL_ERRORS as error:
                raise DataError(f"{header.path} has corrupt pixel data ({error}); replace the file") from None
        return
    try:
        array = np.load(header.path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"cannot read {header.path}: {error}; replace the corrupt file") from None
    check_values(array, str(header.path), hdr)


# ---- PSFs and kernel codes --------------------------------------------------------------------------------

def psf_channels_last(shape: tuple[int, ...]) -> bool | None:
    """The layout of a stored PSF, by its shape: True for (h, w, 3) — what udcbench writes and the dataset
    formats hold —, False for (3, h, w) — older `udcbench psf` files and the bundled udc-mini PSF —, None for
    neither. (3, 3, 3) reads as (h, w, 3)."""
    if len(shape) != 3:
        return None
    return True if shape[2] == 3 else False if shape[0] == 3 else None


def inspect_psf(path: Path) -> None:
    shape, dtype = npy_header(path)
    if psf_channels_last(shape) is None or dtype.kind not in "fiu":
        raise DataError(f"PSF {path} holds a {shape} {dtype} array; expected a numeric (h, w, 3) array "
                        "(or (3, h, w)) — re-save it in that shape")


def read_psf(path: Path) -> torch.Tensor:
    """A PSF stored (h, w, 3) — or (3, h, w), detected by shape — -> (3, h, w) float32."""
    array = load_npy(path)
    if psf_channels_last(array.shape):
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def inspect_code(path: Path) -> None:
    shape, dtype = npy_header(path)
    if not shape or max(shape) != math.prod(shape) or dtype.kind not in "fiu":
        raise DataError(f"kernel code {path} holds a {shape} {dtype} array; expected a numeric vector, e.g. "
                        "(5,) — re-save it in that shape")


def read_code(path: Path) -> torch.Tensor:
    """A kernel code stored (C,) -> (C, 1, 1) float32, as DISCNet conditions on."""
    return torch.from_numpy(np.asarray(load_npy(path), dtype=np.float32).reshape(-1, 1, 1).copy())


# ---- MATLAB files ------------------------------------------------------------------------------------------

def _h5py():
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def _v73_error(path: Path) -> DataError:
    return DataError(f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it as v7 in MATLAB "
                     "(save(FILE, NAME, '-v7')) or `pip install -c constraints.txt h5py`")


def _v5_truncated(path: Path) -> bool:
    """Whether the last top-level element of a MATLAB v5 file runs past the end of the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(128)
        if len(header) < 128:
            return True
        endian = "<" if header[126:128] == b"IM" else ">"
        position = 128
        while position + 8 <= size:
            handle.seek(position)
            tag, nbytes = struct.unpack(endian + "II", handle.read(8))
            if tag >> 16:  # small data element: tag and data in 8 bytes
                position += 8
                continue
            if position + 8 + nbytes > size:
                return True
            position += 8 + (nbytes if tag == 15 else (nbytes + 7) // 8 * 8)  # 15: compressed, unpadded
    return False


def mat_variables(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], bool]:
    """{name: (shape, class)} of a .mat file from its variable headers, and whether it is HDF5 (v7.3)."""
    try:
        found = scipy.io.whosmat(str(path))
    except NotImplementedError:  # v7.3: an HDF5 file
        h5py = _h5py()
        if h5py is None:
            raise _v73_error(path) from None
        try:
            with h5py.File(path, "r") as handle:  # h5py sees MATLAB's arrays transposed
                return {name: (tuple(int(n) for n in reversed(item.shape)), item.dtype.name)
                        for name, item in handle.items() if isinstance(item, h5py.Dataset)}, True
        except OSError as error:
            raise DataError(f"{path} is corrupt: h5py cannot open it ({error}); replace the file") from None
    except Exception as error:  # scipy raises many types (IndexError, ValueError, MatReadError) on a bad file
        raise DataError(f"{path} is corrupt: scipy cannot list its variables ({type(error).__name__}: {error}); "
                        "replace the file") from None
    if scipy.io.matlab.matfile_version(str(path))[0] == 1 and _v5_truncated(path):
        raise DataError(f"{path} is corrupt or truncated: a variable runs past the end of the file; replace it")
    return {name: (tuple(int(n) for n in shape), cls) for name, shape, cls in found}, False


class H5Stack:
    """Indexes a MATLAB v7.3 (N, H, W, 3) array one image at a time through h5py (stored as (3, W, H, N))."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def __getitem__(self, index: int) -> np.ndarray:
        h5py = _h5py()
        if h5py is None:
            raise _v73_error(self.path)
        try:
            with h5py.File(self.path, "r") as handle:
                return np.asarray(handle[self.key][..., index]).transpose(2, 1, 0)
        except OSError as error:
            raise DataError(f"cannot read {self.key} from {self.path}: {error}; replace the corrupt file") from None


def load_mat_array(path: Path, key: str, hdf5: bool):
    """One variable of a .mat file: the whole array in memory (v5/v7), or an image-by-image reader (v7.3)."""
    if hdf5:
        return H5Stack(path, key)
    try:
        return scipy.io.loadmat(str(path), variable_names=[key])[key]
    except Exception as error:  # as in mat_variables: scipy's errors on bad files have no common type
        raise DataError(f"cannot read {key} from {path} ({type(error).__name__}: {error}); replace the corrupt "
                        "file") from None
