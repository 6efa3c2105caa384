import numpy as np
import pytest
import torch
from PIL import Image

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.objectives import parse_mask
from udcbench.errors import DataError, MissingWeightsError, SpecError


def test_clean_objectives_are_zero_at_the_quantised_clean_output_and_batched(images):
    degraded, gt = images
    for name in ("mse-clean", "l1-clean"):
        objective = make_objective(name)
        reference = objective.reference(degraded, gt, degraded)
        assert torch.equal(reference, torch.round(degraded * 255) / 255)
        assert objective(reference, reference).shape == (4,)
        assert torch.all(objective(reference, reference) == 0)
        assert torch.all(objective(gt, reference) > 0)


def test_l1_and_mse_measure_what_they_say(images):
    _, gt = images
    shifted = gt + 0.1
    assert torch.allclose(make_objective("l1-clean")(shifted, gt), torch.full((4,), 0.1), atol=1e-6)
    assert torch.allclose(make_objective("mse-gt")(shifted, gt), torch.full((4,), 0.01), atol=1e-6)


def test_targeted_input_pulls_the_output_toward_the_degraded_input(tiny_model, images):
    degraded, gt = images
    objective = make_objective("targeted:input")
    assert objective.targeted
    with torch.no_grad():
        clean = tiny_model(degraded)
    reference = objective.reference(clean, gt, degraded)
    assert torch.equal(reference, degraded)
    attack = make_attack("pgd", eps=8 / 255, steps=10)
    adversarial = attack.perturb(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = (clean - degraded).pow(2).flatten(1).mean(1)
        after = (tiny_model(adversarial) - degraded).pow(2).flatten(1).mean(1)
    assert torch.all(after < before)  # closer to the target than the clean output was


def test_targeted_file_is_read_and_resized(tmp_path, images):
    degraded, gt = images
    target = np.zeros((16, 24, 3), dtype=np.uint8)
    target[:, :12] = 255
    path = tmp_path / "target.png"
    Image.fromarray(target).save(path)
    objective = make_objective(f"targeted:{path}")
    objective.check()
    reference = objective.reference(degraded, gt, degraded)
    assert reference.shape == degraded.shape
    assert reference[0, :, :, :8].min() > 0.9 and reference[0, :, :, -8:].max() < 0.1
    assert torch.allclose(objective(reference, reference), torch.zeros(4))


def test_bad_objectives_fail_clearly(tmp_path):
    with pytest.raises(SpecError, match="unknown objective 'mse'; choose one of mse-clean"):
        make_objective("mse")
    with pytest.raises(DataError, match="does not exist"):
        make_objective(f"targeted:{tmp_path / 'none.png'}").check()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read target image"):
        make_objective(f"targeted:{tmp_path / 'bad.png'}").check()


def test_lpips_objective_without_weights_says_which_file(tmp_path, monkeypatch):
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth") as error:
        make_objective("lpips-clean").check()
    assert "\n" not in str(error.value)
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        make_attack("lpips-pgd")


def test_box_mask_restricts_pgd_to_the_region(tiny_model, images):
    degraded, gt = images
    mask = parse_mask("box:0.25,0.25,0.5,0.5")(32, 32)
    assert mask.sum() == 16 * 16 and mask[0, 0, 8:24, 8:24].min() == 1
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(tiny_model(degraded), gt)
    attack = make_attack("pgd", eps=8 / 255, steps=5)
    adversarial = attack(tiny_model, degraded, objective, reference, torch.Generator().manual_seed(0), mask=mask)
    delta = adversarial - degraded
    assert delta[..., 8:24, 8:24].abs().max() > 4 / 255
    outside = delta * (1 - mask)
    assert outside.abs().max() == 0
    with torch.no_grad():
        assert torch.all(objective(tiny_model(adversarial), reference) > objective(tiny_model(degraded), reference))


def test_png_mask_and_bad_masks(tmp_path):
    image = np.zeros((10, 10), dtype=np.uint8)
    image[:5] = 255
    Image.fromarray(image).save(tmp_path / "mask.png")
    mask = parse_mask(str(tmp_path / "mask.png"))(20, 20)
    assert mask[0, 0, :10].min() == 1 and mask[0, 0, 10:].max() == 0
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(SpecError, match="no white pixels"):
        parse_mask(str(tmp_path / "black.png"))
    with pytest.raises(SpecError, match="box:TOP,LEFT,HEIGHT,WIDTH"):
        parse_mask("box:1,2")
    with pytest.raises(SpecError, match="does not lie inside the image"):
        parse_mask("box:0.5,0.5,0.75,0.25")
    assert parse_mask(None) is None
