import pytest
import torch
from safetensors import safe_open

from udcbench.errors import SpecError
from udcbench.models.train import TrainConfig, train


def tensors(path):
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


def test_training_is_reproducible_and_records_its_recipe(tmp_path):
    config = TrainConfig(model="nafnet-nano", steps=3, batch_size=2, seed=5)
    train(config, tmp_path / "a.safetensors", command="udcbench train ...")
    train(config, tmp_path / "b.safetensors", command="udcbench train ...")
    a, meta = tensors(tmp_path / "a.safetensors")
    b, _ = tensors(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert meta["seed"] == "5" and meta["steps"] == "3" and meta["command"] == "udcbench train ..."
    assert float(meta["test_psnr_degraded"]) == pytest.approx(22.607, abs=0.01)
    other, _ = tensors(train(TrainConfig(model="nafnet-nano", steps=3, batch_size=2, seed=6),
                             tmp_path / "c.safetensors") and tmp_path / "c.safetensors")
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_crop_larger_than_the_data_is_refused(tmp_path):
    with pytest.raises(SpecError, match="crop"):
        train(TrainConfig(model="nafnet-nano", steps=1, crop=4096), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
