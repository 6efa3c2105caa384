import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from udcbench.metrics import psnr, ssim


def pair(seed, shape, noise):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    return a, b


def to_torch(*arrays):
    return [torch.from_numpy(a).permute(2, 0, 1)[None] for a in arrays]


@pytest.mark.parametrize("shape, noise", [((32, 32, 3), 0.05), ((48, 64, 3), 0.2), ((64, 40, 3), 0.01)])
def test_psnr_and_ssim_match_scikit_image(shape, noise):
    a, b = pair(0, shape, noise)
    ta, tb = to_torch(a, b)
    assert psnr(ta, tb).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)
    expected = structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(ta, tb).item() == pytest.approx(expected, abs=1e-4)


def test_float32_photo_parity():
    from skimage.data import astronaut

    a = astronaut()[100:164, 200:264].astype(np.float32) / 255
    b = np.clip(a * 0.9 + 0.03, 0, 1).astype(np.float32)
    ta, tb = to_torch(a, b)
    expected = structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(ta, tb).item() == pytest.approx(expected, abs=1e-4)
    assert psnr(ta, tb).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)


def test_batched_values_equal_per_image_values():
    a, b = pair(1, (32, 32, 3), 0.1)
    c, d = pair(2, (32, 32, 3), 0.3)
    ta, tb = to_torch(a, b)
    tc, td = to_torch(c, d)
    batch_a, batch_b = torch.cat([ta, tc]), torch.cat([tb, td])
    assert torch.allclose(psnr(batch_a, batch_b), torch.cat([psnr(ta, tb), psnr(tc, td)]))
    assert torch.allclose(ssim(batch_a, batch_b), torch.cat([ssim(ta, tb), ssim(tc, td)]))


def test_identical_images_give_ssim_one():
    a, _ = pair(3, (32, 32, 3), 0.0)
    (ta,) = to_torch(a)
    assert ssim(ta, ta).item() == pytest.approx(1.0, abs=1e-9)


def test_metrics_are_differentiable():
    a, b = pair(4, (32, 32, 3), 0.1)
    ta, tb = to_torch(a, b)
    tb = tb.clone().requires_grad_(True)
    (psnr(ta, tb) + ssim(ta, tb)).sum().backward()
    assert tb.grad is not None and torch.isfinite(tb.grad).all() and tb.grad.abs().sum() > 0
