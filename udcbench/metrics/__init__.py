"""Image-quality metrics (torch, differentiable): PSNR, SSIM and native LPIPS (local weights; the function is
`udcbench.metrics.lpips.lpips`, the submodule keeps the name), and the metric descriptors every later stage reads
(`udcbench.metrics.base`: register a metric once, with its direction, unit, digits, tolerance and needs)."""

from udcbench.metrics.base import Metric, get_metric, register_metric, registered
from udcbench.metrics.fidelity import per_image_mse, psnr, ssim
from udcbench.metrics.lpips import LPIPS, load_lpips, lpips_available

__all__ = ["LPIPS", "Metric", "get_metric", "load_lpips", "lpips_available", "per_image_mse", "psnr",
           "register_metric", "registered", "ssim"]
