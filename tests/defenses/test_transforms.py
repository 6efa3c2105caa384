import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.adaptive import eot
from udcbench.defenses import Defense, DefenseComponent, make_defense
from udcbench.errors import SpecError
from udcbench.registry import DEFENSES


def component(spec):
    (only,) = make_defense(spec).components
    return only


def smooth_images(batch=4, size=32, seed=0):
    """Photo-like content: low-frequency colour fields (upsampled 4×4 noise) plus a gentle ramp."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 4, 4, generator=generator)
    fields = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    ramp = torch.linspace(0, 0.2, size).view(1, 1, 1, size)
    return (0.1 + 0.7 * fields + ramp).clamp(0, 1)


def mixed_batch(height=37, width=29, seed=1):
    """Four images of different content and an awkward size (not a multiple of the 16 px JPEG MCU)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, height, width, generator=generator)
    smooth = F.interpolate(torch.rand(1, 3, 3, 3, generator=generator), size=(height, width), mode="bilinear")
    constant = torch.full((1, 3, height, width), 0.3)
    edges = (torch.arange(width).view(1, 1, 1, width) % 8 < 4).float().expand(1, 3, height, width)
    return torch.cat([noise, smooth, constant, edges])


def pillow_jpeg(image, quality):
    """Pillow's own encode/decode at its default settings, image by image (the reference)."""
    out = []
    for pixels in image.double().numpy():
        uint8 = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(uint8).save(buffer, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out).astype(np.float32) / 255)


# --- registry, arguments, the common contract ---------------------------------------------------------

def test_components_are_registered_with_kind_description_and_differentiability():
    expected = {"jpeg": False, "blur": True, "median": True, "bits": False}
    for name, differentiable in expected.items():
        info = DEFENSES.get(name).info
        assert info["kind"] == "transform" and info["differentiable"] is differentiable
        assert name in info["description"] or "JPEG" in info["description"]
    assert DEFENSES.get("none").info["kind"] == "identity"


def test_defaults_and_descriptions():
    assert component("jpeg").quality == 75 and component("jpeg:30").quality == 30
    assert component("blur").sigma == 1.0 and component("blur:0.5").sigma == 0.5
    assert component("blur:0.7").radius == 3 and component("blur:2").radius == 6
    assert component("median").kernel_size == 3 and component("median:5").kernel_size == 5
    assert component("bits").bit_depth == 4 and component("bits:8").bit_depth == 8
    assert component("jpeg:30").describe() == "jpeg(quality=30, 4:2:0)"
    assert component("blur:1.5").describe() == "blur(sigma=1.5, radius=5)"
    assert component("median:5").describe() == "median(kernel_size=5)"
    assert component("bits:3").describe() == "bits(bit_depth=3)"
    assert component("none").describe() == "none"


@pytest.mark.parametrize("spec, message", [
    ("jpeg:abc", "jpeg takes a quality 1–100, e.g. jpeg:75; got 'jpeg:abc'"),
    ("jpeg:0", "jpeg takes a quality 1–100, e.g. jpeg:75; got 'jpeg:0'"),
    ("jpeg:101", "jpeg takes a quality 1–100, e.g. jpeg:75; got 'jpeg:101'"),
    ("jpeg:7.5", "jpeg takes a quality 1–100, e.g. jpeg:75; got 'jpeg:7.5'"),
    ("blur:abc", "blur takes a Gaussian sigma in pixels > 0, e.g. blur:1.0; got 'blur:abc'"),
    ("blur:0", "blur takes a Gaussian sigma in pixels > 0, e.g. blur:1.0; got 'blur:0'"),
    ("blur:-1", "blur takes a Gaussian sigma in pixels > 0, e.g. blur:1.0; got 'blur:-1'"),
    ("blur:nan", "blur takes a Gaussian sigma in pixels > 0, e.g. blur:1.0; got 'blur:nan'"),
    ("blur:inf", "blur takes a Gaussian sigma in pixels > 0, e.g. blur:1.0; got 'blur:inf'"),
    ("median:4", "median takes an odd kernel size ≥ 3, e.g. median:3; got 'median:4' (use 3 or 5)"),
    ("median:1", "median takes an odd kernel size ≥ 3, e.g. median:3; got 'median:1'"),
    ("median:x", "median takes an odd kernel size ≥ 3, e.g. median:3; got 'median:x'"),
    ("bits:0", "bits takes a bit depth 1–8, e.g. bits:4; got 'bits:0'"),
    ("bits:9", "bits takes a bit depth 1–8, e.g. bits:4; got 'bits:9'"),
    ("bits:four", "bits takes a bit depth 1–8, e.g. bits:4; got 'bits:four'"),
    ("none:3", "defense 'none' takes no argument, got 'none:3'"),
])
def test_argument_errors_say_what_is_wrong_and_give_an_example(spec, message):
    with pytest.raises(SpecError) as error:
        make_defense(spec)
    assert str(error.value) == message


def test_inputs_the_transform_cannot_take_are_typed_errors():
    with pytest.raises(SpecError, match=r"blur: sigma 5 needs a kernel radius of 15 px, which does not fit a 8×8"):
        component("blur:5").transform(torch.rand(1, 3, 8, 8), None)
    with pytest.raises(SpecError, match=r"median: a 9×9 window needs a kernel radius of 4 px"):
        component("median:9").transform(torch.rand(1, 3, 4, 12), None)
    with pytest.raises(SpecError, match=r"jpeg compresses RGB images \(3 channels\); got 1 channels"):
        component("jpeg").transform(torch.rand(1, 1, 8, 8), None)
    with pytest.raises(SpecError, match=r"add a batch dimension"):
        component("bits").transform(torch.rand(3, 8, 8), None)


@pytest.mark.parametrize("spec", ["none", "jpeg:10", "jpeg:100", "blur:0.6", "blur:2", "median:3", "median:5",
                                  "bits:1", "bits:5"])
def test_every_component_keeps_shape_dtype_range_and_is_deterministic(spec):
    x = mixed_batch()
    x[0, :, :4, :4] = 0.0
    x[0, :, -4:, -4:] = 1.0
    defense = component(spec)
    a = defense.transform(x, torch.Generator().manual_seed(0))
    b = defense.transform(x, torch.Generator().manual_seed(99))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)  # no randomness: the generator is unused
    d = defense.differentiable_transform(x.clone().requires_grad_(True), torch.Generator().manual_seed(0))
    assert torch.equal(d.detach(), a)  # the adaptive path is exact in value
    doubled = defense.transform(x.double(), None)
    assert doubled.dtype == torch.float64 and torch.allclose(doubled.float(), a, atol=1e-6)


# --- JPEG -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quality", [100, 95, 75, 30, 10, 1])
def test_jpeg_is_bit_exact_with_pillows_own_encode_and_decode(quality):
    x = torch.cat([mixed_batch(), smooth_images(2, 37)[:, :, :, :29]])
    assert torch.equal(component(f"jpeg:{quality}").transform(x, None), pillow_jpeg(x, quality))


def test_jpeg_error_grows_as_quality_drops_and_q100_is_close():
    x = smooth_images()
    errors = [(component(f"jpeg:{q}").transform(x, None) - x).abs().mean().item() for q in (100, 95, 75, 30, 10)]
    assert errors == sorted(errors) and len(set(errors)) == len(errors), errors
    assert errors[0] < 0.005  # uint8 rounding + 4:2:0 chroma on smooth content
    assert errors[-1] > 3 * errors[1]


def test_jpeg_compresses_each_image_of_a_batch_on_its_own():
    x = mixed_batch()
    jpeg = component("jpeg:50")
    batch = jpeg.transform(x, None)
    for i in range(x.shape[0]):
        assert torch.equal(batch[i:i + 1], jpeg.transform(x[i:i + 1], None))
    assert torch.equal(torch.round(batch * 255) / 255, batch)  # decoded uint8 values
    assert (batch[2] - 0.3).abs().max() <= 1 / 255 + 1e-6  # a flat image stays flat
    assert not torch.equal(batch[0], batch[1])


def test_jpeg_bpda_is_exact_forward_and_straight_through_backward():
    jpeg = component("jpeg:30")
    x = smooth_images(2).requires_grad_(True)
    y = jpeg.differentiable_transform(x, None)
    assert torch.equal(y.detach(), jpeg.transform(x.detach(), None))
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))

    def loss(z):
        return (weights * z).square().sum()

    (grad_input,) = torch.autograd.grad(loss(y), x)
    exact = y.detach().requires_grad_(True)
    (grad_output,) = torch.autograd.grad(loss(exact), exact)
    assert torch.isfinite(grad_input).all() and grad_input.abs().sum() > 0
    assert torch.equal(grad_input, grad_output)  # identity BPDA: d loss/dx = d loss/dy at y = jpeg(x)


def test_pgd_through_jpeg_bpda_raises_the_objective_on_the_exact_defense(tiny_model, images):
    degraded, gt = images
    jpeg = component("jpeg:75")
    objective = make_objective("mse-clean")
    generator = torch.Generator().manual_seed(0)

    def defended(x):  # what the gray-box evaluation and the score see: the exact JPEG
        return tiny_model(jpeg.transform(x, generator))

    with torch.no_grad():
        reference = objective.reference(defended(degraded), gt)
        before = objective(defended(degraded), reference)
    attack = make_attack("pgd", eps=8 / 255, steps=5)
    adversarial = attack(lambda x: tiny_model(jpeg.differentiable_transform(x, generator)), degraded, objective,
                         reference, torch.Generator().manual_seed(0))
    assert (adversarial - degraded).abs().max() <= 8 / 255 + 1e-6
    signs = torch.randint(0, 2, degraded.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        after = objective(defended(adversarial), reference)
        random = objective(defended((degraded + 8 / 255 * signs).clamp(0, 1)), reference)
    # far above the clean value and above random ±eps noise of the same budget: the BPDA gradient is informative
    assert (after > 100 * before.clamp_min(1e-8)).all() and (after > 1.4 * random).all(), (before, random, after)


# --- blur ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.5, 0.7, 1.0, 2.0])
def test_blur_matches_scipys_gaussian_filter_with_mirror_boundaries(sigma):
    x = torch.rand(2, 3, 20, 23, generator=torch.Generator().manual_seed(2))
    blurred = component(f"blur:{sigma}").transform(x, None)
    reference = ndimage.gaussian_filter(x.double().numpy(), sigma=sigma, mode="mirror",
                                        radius=math.ceil(3 * sigma), axes=(2, 3))
    assert np.abs(blurred.numpy() - reference).max() < 1e-5
    # the edge-repeating boundary ('reflect' in scipy) is a different filter: the test can tell them apart
    other = ndimage.gaussian_filter(x.double().numpy(), sigma=sigma, mode="reflect",
                                    radius=math.ceil(3 * sigma), axes=(2, 3))
    assert np.abs(blurred.numpy() - other).max() > 1e-3


def test_blur_leaves_a_constant_image_unchanged_and_smooths_noise():
    flat = torch.full((1, 3, 16, 16), 0.42)
    assert torch.allclose(component("blur:1.3").transform(flat, None), flat, atol=1e-6)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert component("blur:1").transform(noise, None).var() < 0.25 * noise.var()


def test_blur_is_differentiable():
    blur = component("blur:1")
    x = (0.2 + 0.6 * torch.rand(1, 2, 9, 10, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: blur.differentiable_transform(v, None), (x,))
    # a linear filter: the gradient of sum(w · blur(x)) is the (mirror-boundary) adjoint applied to w
    (grad,) = torch.autograd.grad(blur.differentiable_transform(x, None).sum(), x)
    assert torch.isfinite(grad).all() and abs(grad.sum().item() - x.numel()) < 1e-9


# --- median -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [3, 5, 7])
def test_median_matches_scipys_median_filter_exactly(size):
    x = torch.rand(2, 3, 17, 21, generator=torch.Generator().manual_seed(size))
    filtered = component(f"median:{size}").transform(x, None)
    reference = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="mirror")
    assert np.array_equal(filtered.numpy(), reference)


def test_median_removes_salt_and_pepper_outliers():
    image = torch.full((1, 3, 12, 12), 0.5)
    noisy = image.clone()
    noisy[0, :, 5, 6] = 1.0  # salt
    noisy[0, 1, 2, 2] = 0.0  # pepper
    noisy[0, 0, 0, 0] = 1.0  # on the border
    assert torch.equal(component("median:3").transform(noisy, None), image)
    assert not torch.equal(component("blur:1").transform(noisy, None), image)


def test_median_gradient_routes_to_the_selected_pixel():
    x = torch.rand(1, 3, 10, 11, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    y = component("median:3").differentiable_transform(x, None)
    (grad,) = torch.autograd.grad(y.sum(), x)
    # each output pixel sends its gradient of 1 to exactly one input pixel (distinct values, no ties)
    assert torch.equal(grad, grad.round()) and grad.min() >= 0
    assert grad.sum().item() == y.numel() and grad.count_nonzero() > 0


# --- bit depth ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 8])
def test_bits_gives_at_most_two_to_the_b_levels_on_the_grid(depth):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(depth))
    squeezed = component(f"bits:{depth}").transform(x, None)
    levels = 2 ** depth - 1
    assert squeezed.unique().numel() <= 2 ** depth
    assert torch.equal(torch.round(squeezed * levels), squeezed * levels) or \
        torch.allclose(torch.round(squeezed * levels), squeezed * levels, atol=1e-4)
    assert (squeezed - x).abs().max() <= 0.5 / levels + 1e-6  # the nearest level
    if depth <= 4:
        assert squeezed.unique().numel() == 2 ** depth  # random content reaches every level


def test_bits_8_is_the_identity_on_uint8_images_and_1_is_thresholding():
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(6)).float() / 255
    assert torch.equal(component("bits:8").transform(x, None), x)
    assert torch.equal(component("bits:1").transform(x, None), (x > 0.5).float())


def test_bits_straight_through_gradient_equals_the_identitys():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    (through_bits,) = torch.autograd.grad((weights * component("bits:3").differentiable_transform(x, None)).sum(), x)
    (through_none,) = torch.autograd.grad((weights * component("none").differentiable_transform(x, None)).sum(), x)
    assert torch.equal(through_bits, through_none) and torch.equal(through_bits, weights)


# --- the adaptive path through a composed defense -----------------------------------------------------------

def test_a_composed_defense_passes_finite_gradients_in_the_adaptive_path():
    defense = make_defense("bits:5+median:3+blur:0.8+jpeg:60")
    x = smooth_images(2).requires_grad_(True)
    y = defense.differentiable_transform(x, None)
    assert torch.equal(y.detach(), defense.transform(x.detach(), None))
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().mean() > 1e-3


class GaussianNoise(DefenseComponent):
    """A randomised defense component for the EOT test: x + σ·N(0, 1), a fresh draw from the generator per call."""

    name = "noise"
    randomized = True

    def __init__(self, sigma=0.05):
        super().__init__(None)
        self.sigma = sigma

    def transform(self, image, generator):
        return (image + self.sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def test_eot_over_a_randomised_defense_before_jpeg_lowers_the_gradient_variance(tiny_model, images):
    """The runner's adaptive path: EOT over a randomised component followed by BPDA through JPEG."""
    degraded, gt = images
    defense = Defense("noise+jpeg:75", [GaussianNoise(0.05), component("jpeg:75")])
    draws = torch.Generator().manual_seed(3)

    def defended(x):
        return tiny_model(defense.differentiable_transform(x, draws))

    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)

    def gradient_variance(attack, repeats=20):
        grads = []
        for _ in range(repeats):
            x = degraded.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(attack.value(defended, x, objective, reference).sum(), x)
            assert torch.isfinite(grad).all()
            grads.append(grad)
        return torch.stack(grads).var(dim=0).mean()

    plain = make_attack("pgd", eps=8 / 255, steps=2)
    variance_1, variance_8 = gradient_variance(plain), gradient_variance(eot(plain, k=8))
    assert variance_1 > 0
    assert variance_8 < 0.5 * variance_1, (variance_1, variance_8)  # ≈ 1/8 in expectation


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", ["jpeg:40", "blur:1.2", "median:3", "bits:3"])
def test_components_run_on_the_gpu_and_match_the_cpu(spec):
    x = mixed_batch()
    defense = component(spec)
    on_gpu = defense.transform(x.cuda(), None)
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), defense.transform(x, None), atol=1e-5)
    y = defense.differentiable_transform(x.cuda().requires_grad_(True), None)
    assert y.requires_grad
