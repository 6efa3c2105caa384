import os

import pytest
import torch
from safetensors.torch import save_file

from udcbench.errors import CheckpointError
from udcbench.models import load_model
from udcbench.models.uformer import CONFIGS, Uformer


def nano_state():
    torch.manual_seed(0)
    return Uformer(**CONFIGS["uformer-nano"]).state_dict()


@pytest.mark.parametrize("wrapping", ["params_ema", "params", "state_dict", None])
def test_wrappings_and_module_prefix(tmp_path, wrapping):
    state = {f"module.{k}": v for k, v in nano_state().items()}
    payload = state if wrapping is None else {wrapping: state, "iter": 1}
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    model = load_model("uformer-nano", weights=path)
    assert torch.equal(model.net.input_proj.proj[0].weight, nano_state()["input_proj.proj.0.weight"])


def test_safetensors_roundtrip(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in nano_state().items()}, str(path))
    model = load_model("uformer-nano", weights=path)
    x = torch.rand(1, 3, 128, 128)
    reference = Uformer(**CONFIGS["uformer-nano"])
    reference.load_state_dict(nano_state())
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x).clamp(0, 1))


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    state = nano_state()
    state.pop("input_proj.proj.0.bias")
    state["extra.weight"] = torch.zeros(1)
    state["output_proj.proj.0.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_model("uformer-nano", weights=path)
    message = str(error.value)
    assert "missing keys: input_proj.proj.0.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "output_proj.proj.0.weight" in message and "shape" in message


def test_truncated_checkpoints_are_reported(tmp_path):
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"full{suffix}"
        if suffix == ".pth":
            torch.save(nano_state(), path)
        else:
            save_file({k: v.contiguous() for k, v in nano_state().items()}, str(path))
        data = path.read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated"):
            load_model("uformer-nano", weights=cut)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_checkpoints_carrying_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": nano_state(), "hook": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled code"):
        load_model("uformer-nano", weights=path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("uformer-nano", weights=tmp_path / "nope.pth")
