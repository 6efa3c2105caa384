"""Every registered model runs through the whole pipeline (issue: model zoo, acceptance 3-4)."""

import math

import pytest
import torch

import udcbench
from udcbench import AttackSpec, DataSpec, ModelSpec, RunSpec
from udcbench.data import load_dataset
from udcbench.errors import SpecError
from udcbench.models import bundled_weights
from udcbench.registry import MODELS


def weights_for(name):
    entry = MODELS.get(name)
    if entry.info.get("weights_free") or bundled_weights(name):
        return None
    return "random"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_pgd_runs_on_every_registered_model(name, tmp_path):
    torch.set_num_threads(2)
    spec = RunSpec(model=ModelSpec(name, weights_for(name)), attack=AttackSpec.of("pgd", eps="4/255", steps=1),
                   data=DataSpec("udc-mini", limit=1))
    rows = udcbench.run(spec, out=tmp_path)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["linf"] <= 4 / 255 + 1e-6
    for column in ("psnr_clean_gt", "psnr_adv_gt", "ssim_adv_gt"):
        assert math.isfinite(row[column])
    board = (tmp_path / "leaderboard.md").read_text()
    assert ("RANDOM" in board) == (weights_for(name) == "random")


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_forward_backward_any_size(name, size):
    """Output shape equals input shape (also off the padding multiple), finite, gradients reach the input."""
    torch.set_num_threads(2)
    model = udcbench.load_model(name, weights=weights_for(name))
    extras = {k: v[None] for k, v in load_dataset("udc-mini", limit=1)[0].extras.items()
              if k in model.contract.extra_inputs}
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = model(x, **extras)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_random_weights_must_be_asked_for():
    unbundled = [n for n in MODELS.names() if weights_for(n) == "random"]
    assert unbundled
    for name in unbundled:
        with pytest.raises(SpecError, match="--weights random"):
            udcbench.load_model(name)


def test_every_model_declares_a_contract_and_paper():
    for entry in MODELS.entries():
        assert entry.info["contract"].describe()
        assert entry.info.get("paper")
        assert entry.info.get("family")
