"""Image-quality metrics (torch, differentiable)."""

from udcbench.metrics.fidelity import psnr, ssim

__all__ = ["psnr", "ssim"]
