import pytest
import torch
from torch.nn import functional as F

import udcbench.models.nafnet  # noqa: F401  (registers the nafnet configurations)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.nafnet import CONFIGS, LayerNorm2d, NAFNet

torch.set_num_threads(1)

# w32: the SIDD width-32 release (29.16 M); w64: the SIDD width-64 release, counted by building the official structure
OFFICIAL_PARAMETERS = {"nafnet-w32": (29.16e6, 1e4), "nafnet-w64": (115_982_915, 1)}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = NAFNet(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    expected, precision = OFFICIAL_PARAMETERS[name]
    assert round(count / precision) == round(expected / precision)


def test_nano_is_small():
    with torch.device("meta"):
        net = NAFNet(**CONFIGS["nafnet-nano"])
    assert 0.1e6 <= sum(p.numel() for p in net.parameters()) <= 0.4e6


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = NAFNet(**CONFIGS["nafnet-w32"]).state_dict()
    shapes = {
        "intro.weight": (32, 3, 3, 3), "ending.weight": (3, 32, 3, 3), "downs.0.weight": (64, 32, 2, 2),
        "downs.3.weight": (512, 256, 2, 2), "ups.0.0.weight": (1024, 512, 1, 1), "ups.3.0.weight": (128, 64, 1, 1),
        "encoders.3.7.conv2.weight": (512, 1, 3, 3), "encoders.0.1.sca.1.weight": (32, 32, 1, 1),
        "middle_blks.11.conv5.weight": (512, 512, 1, 1), "middle_blks.0.beta": (1, 512, 1, 1),
        "decoders.3.1.gamma": (1, 32, 1, 1), "decoders.0.0.norm1.weight": (256,), "decoders.0.0.norm2.bias": (256,),
        "encoders.2.3.conv1.weight": (256, 128, 1, 1), "encoders.2.3.conv3.bias": (128,),
        "encoders.1.0.conv4.weight": (128, 64, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "ups.0.0.bias" not in state  # the up-convolutions have no bias
    # intro, ending (weight+bias), 4 downs (weight+bias), 4 ups (weight), 18 tensors per block
    assert len(state) == 4 + 8 + 4 + 18 * sum((2, 2, 4, 8, 12, 2, 2, 2, 2))
    assert not list(NAFNet(**CONFIGS["nafnet-nano"]).buffers())


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = NAFNet(**CONFIGS["nafnet-w32"]).eval()
    with torch.no_grad():  # the release zero-initialises beta/gamma; give the blocks a say in the output
        for name, p in reference.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.1)
    wrapped = {"params": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    path = tmp_path / "NAFNet-SIDD-width32.pth"
    torch.save(wrapped, path)
    model = load_model("nafnet-w32", weights=path)
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())


def test_network_pads_with_zeros_bottom_right_and_crops():
    torch.manual_seed(1)
    net = NAFNet(**CONFIGS["nafnet-nano"]).eval()
    assert net.padder_size == 16
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        out = net(x)
        padded = net(F.pad(x, (0, 10, 0, 14)))
    assert out.shape == x.shape
    assert torch.allclose(out, padded[..., :50, :70], atol=1e-6)
    assert load_model("nafnet-nano", weights="random").contract.pad_multiple == 1


def test_channel_layer_norm_matches_layer_norm_over_channels():
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 7)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(norm(x), expected, atol=1e-5)


def test_family_and_release_need_explicit_weights():
    from udcbench.errors import SpecError
    from udcbench.registry import MODELS

    assert {MODELS.get(n).info["family"] for n in CONFIGS} == {"nafnet"}
    with pytest.raises(SpecError, match="--weights"):
        load_model("nafnet-w32")
