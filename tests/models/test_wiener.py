import torch
from torch.nn import functional as F

import udcbench
from udcbench.data import load_dataset
from udcbench.metrics import psnr


def blur(image, psf):
    r = psf.shape[-1] // 2
    padded = F.pad(image, (r, r, r, r), mode="reflect")
    return torch.cat([F.conv2d(padded[:, c:c + 1], psf[c].flip(-1, -2)[None, None]) for c in range(3)], dim=1)


def test_wiener_inverts_a_known_blur():
    generator = torch.Generator().manual_seed(0)
    sharp = F.avg_pool2d(torch.rand(1, 3, 96, 96, generator=generator), 3, 1, 1)  # some texture, no pure noise
    psf = torch.zeros(3, 9, 9)
    psf[:, 4, 4] = 0.6
    psf[:, 4, 0] = psf[:, 4, 8] = 0.2  # two diffraction-like side orders; |H| >= 0.2 everywhere
    observed = blur(sharp, psf)
    model = udcbench.load_model("wiener")
    model.net.regulariser = 1e-4
    restored = model(observed, psf=psf[None])
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert psnr(restored[inner], sharp[inner]) > psnr(observed[inner], sharp[inner]) + 10


def test_wiener_on_udc_mini_beats_the_input_and_is_differentiable():
    model = udcbench.load_model("wiener")
    sample = load_dataset("udc-mini", limit=1)[0]
    degraded = sample.degraded[None].clone().requires_grad_(True)
    bound = model.bind(psf=sample.extras["psf"][None])
    out = bound(degraded)
    assert psnr(out, sample.gt[None]) > psnr(degraded, sample.gt[None])
    out.sum().backward()
    assert degraded.grad.abs().sum() > 0


def test_udc_mini_supplies_psf_and_code():
    extras = load_dataset("udc-mini", limit=1)[0].extras
    assert extras["psf"].shape == (3, 63, 63) and extras["psf_code"].shape == (5, 1, 1)
    assert torch.allclose(extras["psf"].sum(dim=(1, 2)), torch.tensor([0.93, 0.90, 0.82]), atol=1e-5)
