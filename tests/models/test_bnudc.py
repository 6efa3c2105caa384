import pytest
import torch

import udcbench.models.bnudc  # noqa: F401  (registers the configuration)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.bnudc import BNUDC, CONFIGS, convert_state

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"bnudc": 4.57e6}


def legacy_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The net's state dict as the release stores it: legacy weight-norm keys, DataParallel prefix."""
    state = {}
    for key, value in net.state_dict().items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        state[f"module.{key}"] = value
    return state


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = BNUDC(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)


def test_official_state_dict_layout():
    with torch.device("meta"):
        net = BNUDC(**CONFIGS["bnudc"])
    shapes = {k[len("module."):]: tuple(v.shape) for k, v in legacy_state(net).items()}
    expected = {
        "shallow_feat.0.weight": (72, 12, 3, 3), "shallow_feat.0.bias": (72,),
        "shallow_feat.1.pre_conv8.weight": (1, 1, 15, 15),
        "shallow_feat.1.conv1.weight_g": (36, 1, 1, 1), "shallow_feat.1.conv1.weight_v": (36, 72, 3, 3),
        "shallow_feat.1.conv.weight": (72, 144, 3, 3),
        "orsnet.orb3.body.5.conv4.weight_v": (36, 72, 3, 3), "orsnet.orb3.body.6.weight": (72, 72, 3, 3),
        "tail.weight": (24, 72, 3, 3), "tail.bias": (24,),
        "shallow_sub.0.weight": (32, 3, 3, 3),
        "encoder_sub.encoder_level3.1.conv2.weight_g": (24, 1, 1, 1),
        "encoder_sub.down12.down.1.weight": (40, 32, 1, 1), "encoder_sub.down23.down.1.weight": (48, 40, 1, 1),
        "decoder_sub.skip_attn2.pre_conv2.weight": (1, 1, 3, 3), "decoder_sub.up32.up.1.weight": (40, 48, 1, 1),
        "decoder_sub.up21.up.1.weight": (32, 40, 1, 1), "decoder_sub.decoder_level1.0.conv.weight": (32, 64, 3, 3),
        "tail_sub.weight": (12, 32, 3, 3), "tail_sub.bias": (12,), "box_filter.weight": (3, 1, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "orsnet.orb1.body.6.bias" not in shapes  # the conv closing each original-resolution block has no bias
    assert not any("parametrizations" in k for k in shapes)
    assert convert_state(shapes).keys() == net.state_dict().keys()


def test_official_checkpoint_with_legacy_weight_norm_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = BNUDC(**CONFIGS["bnudc"]).eval()
    path = tmp_path / "latest_net_bnudc.pth"
    torch.save(legacy_state(reference), path)  # the release: a plain DataParallel state dict
    model = load_model("bnudc", weights=path)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())


def test_udcbench_keys_load_unchanged(tmp_path):
    torch.manual_seed(4)
    reference = BNUDC(**CONFIGS["bnudc"])
    path = tmp_path / "modern.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = load_model("bnudc", weights=path)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def test_wrapper_returns_the_restored_output():
    model = load_model("bnudc", weights="random")
    assert model.contract.output_index == 2 and model.contract.pad_multiple == 16
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        high, low, out = model.net(x)
        assert high.shape == low.shape == out.shape == x.shape
        assert torch.equal(model(x), out.clamp(0, 1))


def test_low_branch_box_filter_is_normalised():
    # at initialisation the box filter averages; dividing by its response to ones keeps flat images flat
    net = BNUDC(**CONFIGS["bnudc"])
    assert torch.equal(net.box_filter.weight, torch.ones(3, 1, 3, 3))
    flat = torch.full((1, 3, 8, 12), 0.3)
    ones = torch.ones_like(flat)
    with torch.no_grad():
        smoothed = net.box_filter(flat) / net.box_filter(ones)
    assert torch.allclose(smoothed, flat)
