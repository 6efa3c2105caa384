import sys

import pytest
import torch
from torch.nn import functional as F

from udcbench.errors import CheckpointError, MissingWeightsError, UnknownNameError
from udcbench.metrics import lpips as lpips_module
from udcbench.metrics.lpips import LPIPS, find_weights, load_lpips, lpips, lpips_available
from udcbench.registry import METRICS

from lpips_files import (ALEX_CONVS, ALEX_TAPS, BACKBONE_FILES, SCALE, SHIFT, VGG_TAPS, vgg_convs,
                         official_backbone, official_linear, write_weights)

REAL_PACKAGE_LOOKUP = lpips_module._lpips_package_weights  # the fixture below stubs it out
@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user cache, no installed lpips package and no earlier module leaks into a test."""
    monkeypatch.delenv("UDCBENCH_LPIPS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr(lpips_module, "_lpips_package_weights", lambda: [])
    monkeypatch.setattr(lpips_module, "_CACHE", {})


@pytest.fixture
def alex_dir(tmp_path, monkeypatch):
    folder = write_weights(tmp_path / "weights", "alex")
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(folder))
    return folder


def images(seed=0, size=48, batch=2):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference_lpips(x, y, backbone, linear, net):
    """Straightforward LPIPS v0.1 with torch.nn.functional, layer by layer, on each image separately."""
    convs = ALEX_CONVS if net == "alex" else vgg_convs()
    taps = ALEX_TAPS if net == "alex" else VGG_TAPS
    last = len(convs) * 2 + (3 if net == "alex" else 5)

    def tapped(image):
        h = (2 * image - 1 - SHIFT) / SCALE
        out = []
        for index in range(last):
            if index in convs:
                k = convs[index][2]
                stride, pad = (4, 2) if (net == "alex" and index == 0) else (1, k // 2)
                h = F.conv2d(h, backbone[f"features.{index}.weight"], backbone[f"features.{index}.bias"],
                             stride=stride, padding=pad)
            elif index - 1 in convs:
                h = F.relu(h)
                if index in taps:
                    out.append(h)
            else:
                h = F.max_pool2d(h, 3, 2) if net == "alex" else F.max_pool2d(h, 2, 2)
        return out

    scores = []
    for b in range(x.shape[0]):
        total = torch.zeros(())
        for layer, (fa, fb) in enumerate(zip(tapped(x[b:b + 1]), tapped(y[b:b + 1]))):
            na = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            weighted = ((na - nb) ** 2 * linear[f"lin{layer}.model.1.weight"]).sum(dim=1)
            total = total + weighted.mean()
        scores.append(total)
    return torch.stack(scores)


def test_identical_images_score_exactly_zero(alex_dir):
    x = images()
    assert torch.equal(lpips(x, x.clone()), torch.zeros(2))


def test_symmetric_and_shape(alex_dir):
    x, y = images(0), images(1)
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(d, lpips(y, x), atol=1e-6)


def test_differentiable_with_respect_to_input(alex_dir):
    x = images(0).requires_grad_(True)
    lpips(x, images(1)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model = load_lpips("alex")
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_larger_distortion_scores_higher(alex_dir):
    x = images(0, batch=3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    small, large = lpips(x, (x + 0.02 * noise).clamp(0, 1)), lpips(x, (x + 0.3 * noise).clamp(0, 1))
    assert (small < large).all()


@pytest.mark.parametrize("net, size", [("alex", 64), ("vgg", 32)])
def test_matches_reference_math_on_official_format_files(tmp_path, monkeypatch, net, size):
    folder = write_weights(tmp_path / "w", net, seed=3)
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(folder))
    x, y = images(0, size), images(1, size)
    backbone = torch.load(folder / BACKBONE_FILES[net], weights_only=True)
    linear = torch.load(folder / f"{net}.pth", weights_only=True)
    expected = reference_lpips(x, y, backbone, linear, net)
    got = LPIPS(net)(x, y)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got, expected)
    assert torch.allclose(lpips(x, y, net=net), expected, atol=1e-5, rtol=1e-5)


def test_load_is_cached_per_net_and_device(alex_dir):
    assert load_lpips("alex") is load_lpips("alex", device=torch.device("cpu"))


@pytest.mark.parametrize("damage, key", [("shape", "features.3.weight"), ("missing", "features.8.bias"),
                                         ("extra", "features.1.running_mean")])
def test_bad_backbone_state_dict_names_the_key(tmp_path, monkeypatch, damage, key):
    state = official_backbone("alex", 0)
    if damage == "shape":
        state[key] = torch.zeros(192, 64, 3, 3)
    elif damage == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(64)
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(write_weights(tmp_path / "w", "alex", backbone=state)))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as error:
        LPIPS("alex")
    assert "alexnet-owt-7be5be79.pth" in str(error.value)


def test_bad_linear_file_names_the_key(tmp_path, monkeypatch):
    linear = official_linear("vgg", 0)
    linear["lin2.model.1.weight"] = torch.zeros(1, 128, 1, 1)
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(write_weights(tmp_path / "w", "vgg", linear=linear)))
    with pytest.raises(CheckpointError, match=r"lin2\.model\.1\.weight.*\(1, 128, 1, 1\)"):
        LPIPS("vgg")


def test_corrupt_file_is_a_checkpoint_error(alex_dir):
    (alex_dir / "alex.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"alex\.pth"):
        LPIPS("alex")


def test_missing_weights_one_line_message(tmp_path, monkeypatch):
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(tmp_path / "nothing-here"))
    assert not lpips_available("alex") and not lpips_available("vgg") and not lpips_available("squeeze")
    with pytest.raises(MissingWeightsError) as error:
        lpips(images(), images(1))
    message = str(error.value)
    assert "alexnet-owt-7be5be79.pth" in message and "UDCBENCH_LPIPS_DIR" in message
    assert "\n" not in message and "downloads nothing" in message


def test_missing_linear_only_names_the_linear_file(tmp_path, monkeypatch):
    folder = write_weights(tmp_path / "w", "alex")
    (folder / "alex.pth").unlink()
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(folder))
    with pytest.raises(MissingWeightsError, match=r"alex\.pth") as error:
        find_weights("alex")
    assert "alexnet-owt" not in str(error.value)


def test_torch_hub_cache_and_lpips_package_are_found(tmp_path, monkeypatch):
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(official_backbone("alex", 0), hub / BACKBONE_FILES["alex"])
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('lpips must not be imported')\n")
    torch.save(official_linear("alex", 1), package / "weights" / "v0.1" / "alex.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(lpips_module, "_lpips_package_weights", REAL_PACKAGE_LOOKUP)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    backbone, linear = find_weights("alex")
    assert backbone == (hub / BACKBONE_FILES["alex"]).resolve()
    assert linear == (package / "weights" / "v0.1" / "alex.pth").resolve()
    assert "lpips" not in sys.modules and lpips_available("alex")
    d = lpips(images(0), images(1))
    assert d.shape == (2,) and torch.isfinite(d).all()


def test_xdg_cache_home_is_the_default_torch_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lpips_module._torch_hub_checkpoints() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"


def test_weights_dir_argument_and_unknown_net(tmp_path):
    folder = write_weights(tmp_path / "explicit", "vgg")
    assert LPIPS("vgg", weights_dir=folder).weight_files[0] == (folder / BACKBONE_FILES["vgg"]).resolve()
    with pytest.raises(UnknownNameError, match="squeeze"):
        LPIPS("squeeze")


def test_too_small_images_give_a_clear_error(alex_dir):
    with pytest.raises(ValueError, match="at least 31x31"):
        lpips(images(size=24), images(1, size=24))


def test_registered_as_lower_is_better_metrics(alex_dir):
    for name in ("lpips-alex", "lpips-vgg"):
        assert METRICS.get(name).info["higher_is_better"] is False
    x, y = images(0), images(1)
    assert torch.equal(METRICS.get("lpips-alex").factory(x, y), lpips(x, y))
