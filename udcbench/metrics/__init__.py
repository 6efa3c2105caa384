"""Image-quality metrics (torch, differentiable): PSNR, SSIM and native LPIPS (local weights; the function is
`udcbench.metrics.lpips.lpips`, the submodule keeps the name)."""

from udcbench.metrics.fidelity import psnr, ssim
from udcbench.metrics.lpips import LPIPS, load_lpips, lpips_available

__all__ = ["LPIPS", "load_lpips", "lpips_available", "psnr", "ssim"]
