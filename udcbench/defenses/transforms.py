"""Input-transform defenses: the identity, JPEG, Gaussian blur, median filter and bit-depth reduction.

Each component maps a (B, C, H, W) batch in [0, 1] to a batch of the same shape, dtype and device in [0, 1].
All are deterministic (the generator is accepted and unused). `transform` is the exact defense;
`differentiable_transform` is what an adaptive attack differentiates: the same values, and for the components
whose exact transform has no useful gradient (JPEG, quantisation) a BPDA backward pass — straight-through,
i.e. the identity's gradient (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
Security", ICML 2018). Blur is differentiable as is; the median filter is differentiable almost everywhere.

    defense = make_defense("jpeg:75")
    purified = defense.transform(degraded, generator)            # gray-box: the exact defense
    attacked = lambda x: model(defense.differentiable_transform(x, generator))   # adaptive: attack this
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from udcbench.defenses.base import DefenseComponent, Setting, integer, positive_number
from udcbench.errors import SpecError
from udcbench.registry import register_defense


class NoDefense(DefenseComponent):
    """The identity: the undefended model (the baseline every defense is compared with)."""

    name = "none"

    def __init__(self, argument: str | None = None):
        self.parse(argument)  # no settings: any argument is refused
        super().__init__(None)

    def describe(self) -> str:
        return "none"


register_defense("none", kind="identity", description="no defense: the undefended model")(NoDefense)


def _check_batch(name: str, image: torch.Tensor) -> None:
    if image.ndim != 4:
        raise SpecError(f"{name} transforms a (B, C, H, W) batch of images in [0, 1]; got a tensor of shape "
                        f"{tuple(image.shape)} (add a batch dimension with image[None])")


def _check_fits(name: str, image: torch.Tensor, radius: int, what: str) -> None:
    """Reflect padding by `radius` needs radius < the image's height and width."""
    height, width = image.shape[-2:]
    if radius >= min(height, width):
        raise SpecError(f"{name}: {what} needs a kernel radius of {radius} px, which does not fit a "
                        f"{height}×{width} image (reflect padding needs radius < {min(height, width)}); "
                        f"use a smaller {name} argument")


def _check_fits_dataset(name: str, dataset, radius: int, what: str) -> None:
    """`_check_fits` on the run's first image, while the run is prepared (`ready`): a kernel too large for the
    data is refused before anything is written rather than at the first batch."""
    if dataset is not None and len(dataset):
        _check_fits(name, dataset[0].degraded, radius, what)


def straight_through(exact: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """BPDA with the identity approximation (Athalye et al., ICML 2018): `exact` (= g(image), computed without
    a graph) in value, ∂/∂image = I in the backward pass. Written as exact + (image − image.detach()) rather
    than `udcbench.attacks.adaptive.bpda`'s image + (exact − image).detach(), whose float rounding can move
    the value by an ulp: here the forward value is bit-exact g(image)."""
    if not image.requires_grad:
        return exact
    return exact.detach() + (image - image.detach())


def _quantise_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] → (B, H, W, C) uint8 on the CPU: round(x · 255), clipped."""
    values = image.detach().to("cpu", torch.float64).clamp(0.0, 1.0).mul(255.0).round()
    return values.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class JPEGCompression(DefenseComponent):
    """JPEG compression as a defense (Dziugaite et al. 2016, "A study of the effect of JPG compression on
    adversarial images"; Das et al. 2017, "Keeping the Bad Guys Out"; Guo et al., ICLR 2018).

    Spec: `jpeg:Q` (or jpeg:quality=Q), quality Q an integer in 1–100, default 75. Each image of the batch is
    quantised to uint8 (round(x · 255)), encoded with Pillow (libjpeg) as a baseline JPEG — `Image.save(buffer,
    "JPEG", quality=Q, subsampling=2)`: 4:2:0 chroma subsampling (Pillow's default at every quality), the IJG
    standard quantisation tables scaled by Q, Huffman tables not optimised, not progressive — decoded with Pillow's
    defaults (libjpeg's integer DCT, fancy upsampling), and returned as uint8/255. The result is bit-exact with
    `Image.open(buffer)` of Pillow's own `save(..., quality=Q)`. Inputs on any device go through the CPU and come
    back on their device and dtype.

    The transform has no useful gradient, so `differentiable_transform` is BPDA with the identity as the
    approximation (straight-through): the exact JPEG in the forward pass, ∂output/∂input = I in the backward
    pass, which Athalye et al. (2018) found sufficient against JPEG-style defenses. Shapes: (B, 3, H, W).

        jpeg = make_defense("jpeg:30").components[0]
        y_jpeg = jpeg.transform(y, generator)
    """

    name = "jpeg"
    subsampling = 2  # Pillow's code for 4:2:0
    settings = {"quality": Setting(75, integer(1, 100), "a quality 1–100")}
    shorthand = "quality"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        self.quality = self.configure(argument)["quality"]

    def describe(self) -> str:
        return f"jpeg(quality={self.quality}, 4:2:0)"

    def transform(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from PIL import Image

        _check_batch("jpeg", image)
        if image.shape[1] != 3:
            raise SpecError(f"jpeg compresses RGB images (3 channels); got {image.shape[1]} channels — "
                            "give the defense RGB images in [0, 1]")
        decoded = []
        for pixels in _quantise_to_uint8(image):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=self.quality, subsampling=self.subsampling)
            buffer.seek(0)
            with Image.open(buffer) as compressed:
                decoded.append(np.asarray(compressed.convert("RGB")))
        batch = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return batch.to(image.device, image.dtype)

    def differentiable_transform(self, image: torch.Tensor,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
        return straight_through(self.transform(image.detach(), generator), image)


register_defense("jpeg", kind="transform", differentiable=False,
                 description="JPEG compression at quality Q (jpeg:Q, 1–100, default 75; Pillow, 4:2:0); "
                             "adaptive attacks use BPDA (straight-through)")(JPEGCompression)


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """The 1-D Gaussian exp(−t²/2σ²) on t = −r…r, r = ceil(3σ), normalised to sum 1."""
    radius = math.ceil(3.0 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return (kernel / kernel.sum()).to(device=device, dtype=dtype)


class GaussianBlur(DefenseComponent):
    """Gaussian blur as a defense: linear spatial smoothing of the input, the linear counterpart of the median
    smoother of Xu et al., NDSS 2018, "Feature Squeezing".

    Spec: `blur:SIGMA` (or blur:sigma=SIGMA), the standard deviation in pixels, a number > 0, default 1.0. The
    kernel is the sampled Gaussian truncated at radius r = ceil(3σ) and normalised to sum 1, applied separably
    (rows, then columns) to each channel with reflect padding (the edge pixel is not repeated: scipy's mode
    'mirror'). The image side must exceed r. Differentiable as is, so `differentiable_transform` is the transform.
    Shapes: (B, C, H, W) → the same.

        blur = make_defense("blur:1.5").components[0]
        y_blurred = blur.transform(y, generator)
    """

    name = "blur"
    settings = {"sigma": Setting(1.0, positive_number, "a Gaussian sigma in pixels > 0")}
    shorthand = "sigma"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        self.sigma = self.configure(argument)["sigma"]
        self.radius = math.ceil(3.0 * self.sigma)

    def describe(self) -> str:
        return f"blur(sigma={self.sigma:g}, radius={self.radius})"

    def ready(self, model, dataset, seed: int, device, defense) -> None:
        super().ready(model, dataset, seed, device, defense)
        _check_fits_dataset("blur", dataset, self.radius, f"sigma {self.sigma:g}")

    def transform(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch("blur", image)
        _check_fits("blur", image, self.radius, f"sigma {self.sigma:g}")
        channels = image.shape[1]
        kernel = gaussian_kernel(self.sigma, image.dtype, image.device)
        size = kernel.numel()
        r = self.radius
        rows = F.conv2d(F.pad(image, (r, r, 0, 0), mode="reflect"),
                        kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
        both = F.conv2d(F.pad(rows, (0, 0, r, r), mode="reflect"),
                        kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
        return both.clamp(0.0, 1.0)


register_defense("blur", kind="transform", differentiable=True,
                 description="Gaussian blur (blur:SIGMA in pixels, default 1.0; radius ceil(3σ), reflect "
                             "padding)")(GaussianBlur)


class MedianFilter(DefenseComponent):
    """Median filtering as a defense (Xu et al., NDSS 2018, "Feature Squeezing": local spatial smoothing).

    Spec: `median:K` (or median:kernel_size=K), the side of the square window, an odd integer ≥ 3, default 3. Each
    channel is padded by K // 2 with reflect padding (scipy's mode 'mirror'), unfolded into K×K windows and replaced
    by each window's median (K² is odd, so the median is one of the window's values: the forward pass is exact). The
    image side must exceed K // 2. Differentiable almost everywhere: torch routes the gradient of a median to the
    selected element, so `differentiable_transform` is the transform itself. Shapes: (B, C, H, W) → the same.

        median = make_defense("median:5").components[0]
        y_filtered = median.transform(y, generator)
    """

    name = "median"
    settings = {"kernel_size": Setting(3, integer(3), "an odd kernel size ≥ 3")}
    shorthand = "kernel_size"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        self.kernel_size = self.configure(argument)["kernel_size"]
        if self.kernel_size % 2 == 0:
            raise SpecError(f"median takes an odd kernel size ≥ 3, e.g. median:3; got 'median:{argument}' "
                            f"(use {self.kernel_size - 1} or {self.kernel_size + 1})")

    def describe(self) -> str:
        return f"median(kernel_size={self.kernel_size})"

    def ready(self, model, dataset, seed: int, device, defense) -> None:
        super().ready(model, dataset, seed, device, defense)
        k = self.kernel_size
        _check_fits_dataset("median", dataset, k // 2, f"a {k}×{k} window")

    def transform(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch("median", image)
        k, r = self.kernel_size, self.kernel_size // 2
        _check_fits("median", image, r, f"a {k}×{k} window")
        batch, channels, height, width = image.shape
        padded = F.pad(image, (r, r, r, r), mode="reflect")
        windows = F.unfold(padded, kernel_size=k)  # (B, C·k², H·W)
        windows = windows.view(batch, channels, k * k, height * width)
        return windows.median(dim=2).values.view(batch, channels, height, width)


register_defense("median", kind="transform", differentiable=True,
                 description="median filter over a K×K window (median:K, odd K ≥ 3, default 3; reflect "
                             "padding)")(MedianFilter)


class BitDepthReduction(DefenseComponent):
    """Bit-depth reduction, the colour-depth squeezer of Xu, Evans & Qi, "Feature Squeezing: Detecting
    Adversarial Examples in Deep Neural Networks", NDSS 2018.

    Spec: `bits:B` (or bits:bit_depth=B), the bit depth, an integer 1–8, default 4: x ↦ round(x · (2^B − 1)) / (2^B
    − 1), so at most 2^B values per channel; B = 8 leaves a uint8 image unchanged. Rounding has zero gradient almost
    everywhere, so `differentiable_transform` is BPDA with the identity (straight-through; Athalye et al., ICML
    2018): exact in the forward pass, the identity's gradient in the backward pass. Shapes: (B, C, H, W) → the same.

        bits = make_defense("bits:3").components[0]
        y_squeezed = bits.transform(y, generator)
    """

    name = "bits"
    settings = {"bit_depth": Setting(4, integer(1, 8), "a bit depth 1–8")}
    shorthand = "bit_depth"

    def __init__(self, argument: str | None = None):
        super().__init__(argument)
        self.bit_depth = self.configure(argument)["bit_depth"]

    def describe(self) -> str:
        return f"bits(bit_depth={self.bit_depth})"

    def transform(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch("bits", image)
        levels = 2 ** self.bit_depth - 1
        return torch.round(image.detach().clamp(0.0, 1.0) * levels) / levels

    def differentiable_transform(self, image: torch.Tensor,
                                 generator: torch.Generator | None = None) -> torch.Tensor:
        return straight_through(self.transform(image.detach(), generator), image)


register_defense("bits", kind="transform", differentiable=False,
                 description="bit-depth reduction to B bits (bits:B, 1–8, default 4; Xu et al. 2018); "
                             "adaptive attacks use BPDA (straight-through)")(BitDepthReduction)
