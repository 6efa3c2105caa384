"""What an attack maximises. An objective is a value handed to the attack, not a string inside its loop.

`reference(clean_output, gt, degraded)` computes what the output is compared with, once per image, from the
clean output f(y) that the runner computes anyway (for the default: f(y) quantised to 8 bits, as in Yu et al.,
CVPR 2022); `__call__(output, reference)` returns one differentiable value per image, shape (B,), that the
attack drives up. Targeted objectives return −distance to their target, so they too rise as the attack works.

Names (`--objective`):
  mse-clean        mean squared deviation from the quantised clean output (default)
  mse-gt           mean squared error against the ground truth
  l1-clean         mean absolute deviation from the quantised clean output
  lpips-clean      LPIPS (AlexNet) distance from the quantised clean output; needs local LPIPS weights
  targeted:input   pull the output toward the degraded input y (undo the restoration)
  targeted:FILE    pull the output toward an image file (PNG/JPEG, resized to each image)
A mask restricting δ to a region is a separate option of the run (`--mask`), applied by `Attack.__call__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from udcbench.errors import DataError, SpecError
from udcbench.metrics.fidelity import per_image_mse


def quantise(image: torch.Tensor) -> torch.Tensor:
    """round(255·x)/255: the clean output as it would be saved to an 8-bit file."""
    return torch.round(image.detach() * 255.0) / 255.0


@dataclass(frozen=True)
class Objective:
    """Base class. `targeted` objectives pull the output toward a target; `uses_clean_output` says the
    reference is computed from the clean output (a transfer attack recomputes it on its surrogate)."""

    name: str = "base"
    targeted = False
    uses_clean_output = False

    def reference(self, clean_output: torch.Tensor, gt: torch.Tensor,
                  degraded: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self) -> None:
        """Raise a clear error now (before a run writes anything) if the objective cannot be evaluated."""


@dataclass(frozen=True)
class MSEToClean(Objective):
    """Mean squared deviation of f(y + δ) from the quantised clean output round(255·f(y))/255 (the default)."""

    name: str = "mse-clean"
    quantise: bool = True
    uses_clean_output = True

    def reference(self, clean_output, gt, degraded=None):
        return quantise(clean_output) if self.quantise else clean_output.detach()

    def __call__(self, output, reference):
        return per_image_mse(output, reference)


@dataclass(frozen=True)
class MSEToGroundTruth(Objective):
    """Mean squared error of f(y + δ) against the ground truth."""

    name: str = "mse-gt"

    def reference(self, clean_output, gt, degraded=None):
        return gt

    def __call__(self, output, reference):
        return per_image_mse(output, reference)


@dataclass(frozen=True)
class L1ToClean(Objective):
    """Mean absolute deviation of f(y + δ) from the quantised clean output (Yu et al.'s L1 option)."""

    name: str = "l1-clean"
    uses_clean_output = True

    def reference(self, clean_output, gt, degraded=None):
        return quantise(clean_output)

    def __call__(self, output, reference):
        return (output - reference).abs().flatten(1).mean(dim=1)


@dataclass(frozen=True)
class LPIPSToClean(Objective):
    """LPIPS (Zhang et al., CVPR 2018) of f(y + δ) against the quantised clean output; the LPIPS-guided attack
    of the reference study maximises it. The backbone and linear-layer weights are read from local files."""

    name: str = "lpips-clean"
    net: str = "alex"
    uses_clean_output = True

    def reference(self, clean_output, gt, degraded=None):
        return quantise(clean_output)

    def __call__(self, output, reference):
        from udcbench.metrics.lpips import load_lpips

        return load_lpips(self.net, device=output.device)(output, reference)

    def check(self) -> None:
        from udcbench.metrics.lpips import check_weights

        check_weights(self.net)


@lru_cache(maxsize=8)
def read_target_image(path: str, what: str = "target image") -> torch.Tensor:
    """An RGB image file as a (1, 3, H, W) float tensor in [0, 1] (cached: treat it as read-only); `what` names
    it in errors ('target image', 'mask image'). Decoded in full, so a bad file fails when the objective or the
    mask is checked, before a run writes anything."""
    from udcbench.data.readers import read_rgb

    file = Path(path)
    if not file.is_file():
        fix = ("pass targeted:PATH to an existing PNG/JPEG file or targeted:input" if what == "target image" else
               "pass the path of an existing PNG/JPEG file")
        raise DataError(f"{what} {path} does not exist; {fix}")
    array = read_rgb(file, what, "pass a valid PNG or JPEG file").astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


@dataclass(frozen=True)
class TowardTarget(Objective):
    """−MSE between f(y + δ) and a target: the degraded input (`targeted:input`, undo the restoration) or an
    image file (`targeted:FILE`, bilinearly resized to each image's size)."""

    name: str = "targeted:input"
    target: str = "input"
    targeted = True

    def reference(self, clean_output, gt, degraded=None):
        if self.target == "input":
            if degraded is None:
                raise SpecError("targeted:input needs the degraded input to build its reference")
            return degraded.detach()
        image = read_target_image(self.target).to(clean_output.device, clean_output.dtype)
        size = tuple(clean_output.shape[-2:])
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image.clamp(0.0, 1.0).expand(clean_output.shape[0], -1, -1, -1)

    def __call__(self, output, reference):
        return -per_image_mse(output, reference)

    def check(self) -> None:
        if self.target != "input":
            read_target_image(self.target)


OBJECTIVES = {"mse-clean": MSEToClean, "mse-gt": MSEToGroundTruth, "l1-clean": L1ToClean,
              "lpips-clean": LPIPSToClean}


def make_objective(name: str) -> Objective:
    """Build an objective from its `--objective` name (see the module docstring)."""
    if name.startswith("targeted:"):
        target = name.split(":", 1)[1]
        if not target:
            raise SpecError("targeted objective needs a target: targeted:input or targeted:PATH.png")
        return TowardTarget(name=name, target=target)
    if name not in OBJECTIVES:
        raise SpecError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}, targeted:input or "
                        "targeted:PATH.png")
    return OBJECTIVES[name]()


def parse_mask(text: str | None):
    """`--mask`: None, `box:TOP,LEFT,HEIGHT,WIDTH` (fractions of the image side, e.g. box:0.25,0.25,0.5,0.5)
    or a PNG file (white = may change, resized nearest to each image). Returns a function (H, W) -> (1,1,H,W)
    mask tensor, or None."""
    if text is None or text == "none":
        return None
    if text.startswith("box:"):
        try:
            top, left, height, width = (float(v) for v in text[4:].split(","))
        except ValueError:
            raise SpecError(f"cannot read mask {text!r}; write box:TOP,LEFT,HEIGHT,WIDTH as fractions of the "
                            "image, e.g. box:0.25,0.25,0.5,0.5") from None
        if not (0 <= top < 1 and 0 <= left < 1 and 0 < height <= 1 - top + 1e-9 and 0 < width <= 1 - left + 1e-9):
            raise SpecError(f"mask box {text!r} does not lie inside the image; fractions must satisfy "
                            "0 ≤ TOP,LEFT < 1 and TOP+HEIGHT, LEFT+WIDTH ≤ 1")

        def box(h: int, w: int) -> torch.Tensor:
            mask = torch.zeros(1, 1, h, w)
            r0, c0 = int(round(top * h)), int(round(left * w))
            r1, c1 = max(r0 + 1, int(round((top + height) * h))), max(c0 + 1, int(round((left + width) * w)))
            mask[..., r0:r1, c0:c1] = 1.0
            return mask

        return box
    image = read_target_image(text, "mask image").mean(dim=1, keepdim=True)
    if image.max() < 0.5:
        raise SpecError(f"mask {text} has no white pixels, so the attack could change nothing; white (≥ 0.5) "
                        "marks where δ may be non-zero")

    def from_file(h: int, w: int) -> torch.Tensor:
        resized = F.interpolate(image, size=(h, w), mode="nearest")
        return (resized >= 0.5).float()

    return from_file
