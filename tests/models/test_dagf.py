import pytest
import torch

import udcbench.models.dagf  # noqa: F401  (registers the dagf configuration)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.dagf import CONFIGS, DAGF

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"dagf": 1.12e6}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = DAGF(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert count == 1_116_834
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = DAGF(**CONFIGS["dagf"]).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    expected = {
        "guided_map.pre_conv8.weight": (1, 1, 15, 15), "guided_map.conv8.weight": (8, 3, 3, 3),
        "guided_map.conv.weight": (3, 32, 3, 3), "guided_map.norm.w_0": (1,),
        "guided_map.norm1.ins_norm.weight": (8,), "lr.conv1.weight": (48, 12, 3, 3),
        "lr.res3_d.pre_conv8.weight": (1, 1, 63, 63), "lr.res2_a.conv4.weight": (24, 48, 3, 3),
        "lr.res1_a.calayer.ca.2.weight": (48, 6, 1, 1), "lr.res1_a.palayer.pa.2.bias": (1,),
        "lr.res_final.conv2.weight": (48, 48, 3, 3), "lr.gate.weight": (4, 192, 3, 3), "lr.gate.bias": (4,),
        "lr.deconv2.bias": (48,), "lr.norm5.w_1": (1,), "lr.deconv1.weight": (12, 48, 1, 1),
        "gf.box_filter.weight": (3, 1, 3, 3), "gf.conv_a.0.weight": (32, 6, 1, 1),
        "gf.conv_a.4.ins_norm.bias": (32,), "gf.conv_a.6.weight": (3, 32, 1, 1),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert len(shapes) == 518
    assert not any("guided_map.calayer" in k or "running_mean" in k for k in shapes)  # no attention, no buffers


def _perturbed_reference(seed: int) -> DAGF:
    torch.manual_seed(seed)
    net = DAGF(**CONFIGS["dagf"]).eval()
    with torch.no_grad():  # move the identity-initialised parts (norm gains, smoothing deltas) off their init
        for parameter in net.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return net


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    reference = _perturbed_reference(3)
    wrapped = {"global_step": 1000, "epoch": 448,
               "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
               "optimizer": {"state": {}, "param_groups": []}, "loss": 0.03}
    path = tmp_path / "model_latest.pth"
    torch.save(wrapped, path)
    model = load_model("dagf", weights=path)
    assert model.info.family == "dagf"
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())
    x = torch.rand(1, 3, 30, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))


def test_contract_and_value_mapping():
    model = load_model("dagf", weights="random")
    contract = model.contract
    assert contract.value_range == (-1.0, 1.0) and contract.pad_multiple == 4 and contract.tone_mapping is None
    # the wrapper hands the network (x - 0.5) * 2 and maps its tanh output back with (y + 1) / 2
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        raw = model.net(x * 2 - 1)
        assert raw.abs().max() <= 1
        assert torch.allclose(model(x), ((raw + 1) / 2).clamp(0, 1))


def test_low_resolution_path_is_computed_inside_and_sizes_checked():
    net = _perturbed_reference(1)
    x = torch.rand(2, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        out = net(x)
        assert out.shape == x.shape
        # batch elements are independent (instance norm, no batch statistics)
        assert torch.allclose(out[1:], net(x[1:]), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 26, 40))


def test_pixel_unshuffle_matches_official_channel_order():
    # the release's unpixel_shuffle: view(b, c, h/r, r, w/r, r).permute(0, 1, 3, 5, 2, 4)
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    manual = x.view(2, 3, 2, 2, 3, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 12, 2, 3)
    assert torch.equal(torch.nn.functional.pixel_unshuffle(x, 2), manual)
