"""Wiener deconvolution: the classical, training-free baseline.

Per colour channel, with the dataset's effective PSF h (the PSF scaled by the display transmittance) and a
constant noise-to-signal regulariser λ, the estimate is X̂ = conj(H)·Y / (|H|² + λ) in the Fourier domain.
λ (default 1e-2) trades ringing against residual blur; it is the classical Wiener filter with a flat noise-to-
signal spectrum. The capture is reflect-padded by the PSF radius (+ to an even size) so the circular FFT
does not wrap the image's edges into each other, and cropped back. Fully differentiable, hence attackable.

Contract: [0, 1] images; extra input `psf` (B, 3, k, k), k odd, supplied by datasets that know their PSF
(`udc-mini`). Shapes: (B, 3, H, W) -> (B, 3, H, W).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from udcbench.models.base import InputContract
from udcbench.registry import register_model


class Wiener(nn.Module):
    def __init__(self, regulariser: float = 1e-2):
        super().__init__()
        self.regulariser = regulariser

    def forward(self, image: torch.Tensor, psf: torch.Tensor) -> torch.Tensor:
        _, _, height, width = image.shape
        k = psf.shape[-1]
        r = k // 2
        mode = "reflect" if r < min(height, width) else "replicate"
        padded = F.pad(image, (r, r, r, r), mode=mode)
        ph, pw = padded.shape[-2:]
        kernel = torch.zeros(psf.shape[0], psf.shape[1], ph, pw, dtype=image.dtype, device=image.device)
        kernel[..., :k, :k] = psf
        kernel = torch.roll(kernel, shifts=(-r, -r), dims=(-2, -1))  # centre the PSF at the origin
        transfer = torch.fft.rfft2(kernel)
        spectrum = torch.fft.rfft2(padded)
        estimate = spectrum * transfer.conj() / (transfer.abs() ** 2 + self.regulariser)
        restored = torch.fft.irfft2(estimate, s=(ph, pw))
        return restored[..., r:r + height, r:r + width]


CONTRACT = InputContract(extra_inputs=("psf",), note="needs the dataset's PSF")


@register_model("wiener", family="wiener", contract=CONTRACT, weights_free=True,
                paper="Wiener deconvolution (classical); regulariser λ = 1e-2",
                checkpoint_format="none: no trainable weights")
def wiener() -> Wiener:
    return Wiener()
