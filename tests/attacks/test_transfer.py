import pytest
import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.data import load_dataset
from udcbench.errors import SpecError
from udcbench.models import load_model


@pytest.fixture(scope="module")
def crops():
    dataset = load_dataset("udc-mini", split="test", limit=4)
    degraded = torch.stack([dataset[i].degraded[:, :64, :64] for i in range(4)])
    gt = torch.stack([dataset[i].gt[:, :64, :64] for i in range(4)])
    return degraded, gt


def test_transfer_is_weaker_than_white_box_on_the_target_and_never_queries_it(crops):
    degraded, gt = crops
    target = load_model("uformer-nano")
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(target(degraded), gt, degraded)
        before = objective(target(degraded), reference)
    white = make_attack("pgd", eps=8 / 255, steps=10)
    transfer = make_attack("transfer", surrogate="nafnet-nano", eps=8 / 255, steps=10)
    assert transfer.params["surrogate"] == "nafnet-nano" and transfer.norm == "linf"
    calls = {"n": 0}

    def counted(x):
        calls["n"] += 1
        return target(x)

    adv_white = white.perturb(target, degraded, objective, reference, torch.Generator().manual_seed(0))
    adv_transfer = transfer.perturb(counted, degraded, objective, reference, torch.Generator().manual_seed(0))
    assert calls["n"] == 0 and torch.equal(transfer.last_queries, torch.zeros(4, dtype=torch.int64))
    assert (adv_transfer - degraded).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        value_white = objective(target(adv_white), reference)
        value_transfer = objective(target(adv_transfer), reference)
    assert value_transfer.mean() < value_white.mean()
    assert value_transfer.mean() > before.mean()  # but it does transfer


def test_transfer_validates_its_base_and_surrogate():
    with pytest.raises(SpecError, match="base attack must be a white-box attack"):
        make_attack("transfer", base="transfer")
    with pytest.raises(SpecError, match="unknown model 'nosuch'"):
        make_attack("transfer", surrogate="nosuch")
    with pytest.raises(SpecError, match="eps must lie in"):
        make_attack("transfer", eps="2")
