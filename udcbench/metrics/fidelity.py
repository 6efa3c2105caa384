"""PSNR and SSIM in torch: batched, differentiable, matching scikit-image.

psnr(a, b) = 10·log10(data_range² / mean((a−b)²)) per image, as `skimage.metrics.peak_signal_noise_ratio`.
ssim(a, b) follows `structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False)`: an 11×11 Gaussian window (σ 1.5, truncated at 3.5σ), K1 0.01,
K2 0.03, the SSIM map averaged over each channel after dropping a 5-px border (where scikit-image's filter
would see padding), then over channels. Inputs are (B, C, H, W) tensors; results are (B,).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from udcbench.registry import register_metric


def per_image_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of each image of a batch: (B, ...) -> (B,). PSNR, the MSE objectives and C&W's
    distortion term all use this one."""
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    mse = per_image_mse(a, b)
    return 10.0 * torch.log10(data_range ** 2 / mse)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
         truncate: float = 3.5) -> torch.Tensor:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    channels = a.shape[1]
    w = _gaussian_window(sigma, truncate, a.dtype, a.device)
    if a.shape[-1] < w.numel() or a.shape[-2] < w.numel():
        raise ValueError(f"ssim needs images of at least {w.numel()}×{w.numel()} pixels, got {tuple(a.shape[-2:])}")
    horizontal = w.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = w.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(x):  # 'valid' separable filtering == scikit-image's filtered map with the border cropped
        return F.conv2d(F.conv2d(x, horizontal, groups=channels), vertical, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(2).mean(dim=2).mean(dim=1)


register_metric("psnr", higher_is_better=True, label="PSNR", unit="dB", digits=2, tolerance=0.05, default=True,
                pairs=("clean_gt", "adv_gt", "adv_clean", "clean_gt_undefended", "adv_gt_undefended", "degraded_gt",
                       "input_adv"),
                description="peak signal-to-noise ratio, data range 1 (matches scikit-image)")(psnr)
register_metric("ssim", higher_is_better=True, label="SSIM", digits=4, tolerance=0.005, default=True, min_size=11,
                description="structural similarity, Gaussian σ 1.5, data range 1 (matches scikit-image)")(ssim)
