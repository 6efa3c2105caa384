import pytest
import torch

from udcbench.models import load_model
from udcbench.models.uformer import CONFIGS, Uformer

OFFICIAL_PARAMETERS = {"uformer-t": 5.29e6, "uformer-s": 20.75e6, "uformer-b": 50.88e6}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = Uformer(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)


def test_official_state_dict_layout():
    with torch.device("meta"):
        keys = Uformer(**CONFIGS["uformer-t"]).state_dict().keys()
    for key in ("input_proj.proj.0.weight", "output_proj.proj.0.weight", "dowsample_0.conv.0.weight",
                "upsample_3.deconv.0.weight", "encoderlayer_0.blocks.0.attn.qkv.to_q.weight",
                "encoderlayer_0.blocks.0.attn.qkv.to_kv.weight", "encoderlayer_0.blocks.1.attn.relative_position_index",
                "encoderlayer_0.blocks.0.attn.relative_position_bias_table", "conv.blocks.1.mlp.dwconv.0.weight",
                "decoderlayer_3.blocks.1.modulator.weight", "decoderlayer_0.blocks.0.mlp.linear2.0.bias"):
        assert key in keys, key
    assert not any(k.startswith("encoderlayer_0.blocks.0.modulator") for k in keys)  # decoder only


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = Uformer(**CONFIGS["uformer-t"]).eval()
    wrapped = {"epoch": 250, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
               "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "Uformer_T_udc.pth"
    torch.save(wrapped, path)
    model = load_model("uformer-t", weights=path)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x).clamp(0, 1))
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())


def test_any_size_input_is_padded_and_cropped_with_gradients():
    model = load_model("uformer-nano", weights="random")
    x = torch.rand(1, 3, 72, 100, requires_grad=True)
    out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_shifted_windows_attend_only_within_their_region():
    # rows of the shift mask: tokens from different image regions must not attend to each other
    from udcbench.models.uformer import LeWinBlock

    block = LeWinBlock(dim=8, heads=1, win=8, shift=4, mlp_ratio=2, modulator=False, resolution=64)
    mask = block._shift_mask(16, 16, "cpu")
    assert mask.shape == (4, 64, 64)
    assert (mask[0] == 0).all()  # the top-left window holds a single region
    assert (mask[3] != 0).any() and (mask[3].diagonal() == 0).all()


def test_bundled_nano_beats_degraded_input_by_two_db():
    from udcbench.data import load_dataset
    from udcbench.models.train import evaluate

    model = load_model("uformer")
    assert model.info.name == "uformer-nano" and model.info.resolved_from == "uformer"
    degraded, restored = evaluate(model, load_dataset("udc-mini", split="test"))
    assert restored - degraded >= 2.0, (degraded, restored)


def test_release_configurations_need_explicit_weights():
    from udcbench.errors import SpecError

    with pytest.raises(SpecError, match="--weights"):
        load_model("uformer-b")
