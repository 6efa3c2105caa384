"""How outputs are scored: float outputs by default; with scoring "8bit" the restored outputs are rounded to
8 bits first, as papers that save their outputs as PNG files measure them. Either way a leaderboard PSNR is the
mean over images of per-image PSNR, and ‖δ‖₂ is computed in float64."""

import dataclasses

import pytest
import torch

from udcbench import api
from udcbench.data import load_dataset
from udcbench.metrics import psnr
from udcbench.models import load_model
from udcbench.runner.execute import quantise
from udcbench.spec import AttackSpec, DataSpec, ModelSpec, RunSpec

SPEC = RunSpec(model=ModelSpec("nafnet-nano"), attack=AttackSpec.of("fgsm", eps="8/255"), data=DataSpec(limit=2))


@pytest.fixture(scope="module")
def scored():
    return api.run(SPEC), api.run(dataclasses.replace(SPEC, scoring="8bit"))


def test_8bit_scoring_rounds_the_outputs_before_the_metrics(scored):
    floats, eight = scored
    model = load_model("nafnet-nano")
    for index, sample in enumerate(load_dataset("udc-mini", limit=2)):
        with torch.no_grad():
            output = model(sample.degraded[None])
        rounded = torch.round(output.clamp(0, 1) * 255) / 255
        assert floats["psnr_clean_gt"][index] == pytest.approx(psnr(output, sample.gt[None]).item(), abs=1e-9)
        assert eight["psnr_clean_gt"][index] == pytest.approx(psnr(rounded, sample.gt[None]).item(), abs=1e-9)
    assert (floats["psnr_clean_gt"] != eight["psnr_clean_gt"]).all()
    assert (floats["psnr_adv_gt"] != eight["psnr_adv_gt"]).all()
    # the attack and the inputs are the same: only what is scored differs
    assert (floats["l2"] == eight["l2"]).all() and (floats["psnr_input_adv"] == eight["psnr_input_adv"]).all()
    assert floats.attrs["run_hash"] != eight.attrs["run_hash"]
    assert set(eight["scoring"]) == {"8bit"} and set(floats["scoring"]) == {"float"}


def test_quantise_is_the_8bit_grid_and_identity_for_float():
    image = torch.rand(1, 3, 8, 8) * 1.2 - 0.1
    assert torch.equal(quantise(image, "float"), image)
    rounded = quantise(image, "8bit")
    assert torch.equal(rounded * 255, torch.round(rounded * 255)) and rounded.min() >= 0 and rounded.max() <= 1


def test_the_l2_norm_is_computed_in_float64(tmp_path):
    frame = api.run(SPEC, out=tmp_path)  # FGSM: a sign pattern, whose float32 norm reads about 2e-5 low
    panel = api.replay(tmp_path, frame.attrs["run_hash"], frame["image"][0])
    delta = panel["adversarial"].double() - panel["degraded"].double()
    assert frame["l2"][0] == pytest.approx(delta.norm().item(), abs=1e-12)
    assert frame["linf"][0] == pytest.approx(8 / 255, abs=1e-7)


def test_an_unknown_scoring_is_refused():
    from udcbench.errors import SpecError

    with pytest.raises(SpecError, match="unknown scoring 'png'"):
        api.prepare(dataclasses.replace(SPEC, scoring="png"))
