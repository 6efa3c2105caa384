import pytest
import torch

import udcbench.models.discnet  # noqa: F401  (registers the configurations)
from udcbench.errors import SpecError
from udcbench.models import RestorationModel, load_model
from udcbench.models.discnet import CONFIGS, DISCNet, dynamic_filter

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"discnet": 3.805e6}


def code(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 5, 1, 1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = DISCNet(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e3) == round(OFFICIAL_PARAMETERS[name] / 1e3)


def test_nano_is_small():
    with torch.device("meta"):
        net = DISCNet(**CONFIGS["discnet-nano"])
    assert 0.2e6 <= sum(p.numel() for p in net.parameters()) <= 0.5e6


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = DISCNet(**CONFIGS["discnet"]).state_dict()
    shapes = {"conv_11.0.weight": (32, 3, 3, 3), "conv_21.0.weight": (64, 32, 3, 3), "conv_33.conv2.bias": (128,),
              "upconv_21.0.weight": (256, 128, 3, 3), "upconv_11.0.weight": (128, 64, 3, 3),
              "final_conv.0.weight": (3, 32, 3, 3), "kconv_11.0.weight": (32, 8, 3, 3),
              "dynamic_kernel1.0.0.weight": (32, 32, 3, 3), "dynamic_kernel1.0.1.weight": (1,),
              "dynamic_kernel2.3.0.weight": (1600, 64, 1, 1), "dynamic_kernel.3.0.weight": (3200, 128, 1, 1),
              "dynamic_kernel.3.1.weight": (1,), "dynamic_kernel.2.conv1.weight": (128, 128, 3, 3)}
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 124


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = DISCNet(**CONFIGS["discnet"]).eval()
    wrapped = {"params": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    path = tmp_path / "net_g_DISCNet.pth"
    torch.save(wrapped, path)
    model = load_model("discnet", weights=path)
    x = torch.rand(1, 3, 30, 34, generator=torch.Generator().manual_seed(0))
    psf = code()
    with torch.no_grad():
        assert torch.equal(model(x, psf_code=psf), RestorationModel(reference, model.info)(x, psf_code=psf))
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())


def test_psf_code_is_required_and_used():
    model = load_model("discnet-nano", weights="random")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SpecError, match="psf_code"):
        model(x)
    with torch.no_grad():
        a = model(x, psf_code=code(2, seed=1))
        b = model(x, psf_code=code(2, seed=2))
        bound = model.bind(psf_code=code(1, seed=1))(x)  # one code shared by the batch
        flat = model(x, psf_code=code(2, seed=1).flatten(1))  # (B, 5) is accepted too
    assert (a - b).abs().max() > 1e-6
    assert torch.allclose(bound[:1], a[:1], atol=1e-6) and torch.equal(flat, a)  # same first code


def test_dynamic_filter_tap_order():
    # tap index c·k² + i·k + j reads the neighbour at row offset i-1, column offset j-1 (k = 3)
    feats = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    taps = torch.zeros(1, 2 * 9, 5, 6)
    taps[:, 0 * 9 + 0 * 3 + 2] = 1.0  # channel 0: up one row, right one column
    taps[:, 1 * 9 + 2 * 3 + 1] = 1.0  # channel 1: down one row
    out = dynamic_filter(feats, taps, 3)
    assert torch.equal(out[0, 0, 1:, :-1], feats[0, 0, :-1, 1:])
    assert torch.equal(out[0, 1, :-1], feats[0, 1, 1:])


def test_network_pads_internally_like_the_official_eval_path():
    torch.manual_seed(0)
    net = DISCNet(**CONFIGS["discnet-nano"]).eval()
    x = torch.rand(1, 3, 18, 21)
    with torch.no_grad():
        out = net(x, code())
        padded = net(torch.nn.functional.pad(x, (0, 3, 0, 2), mode="replicate"), code())
    assert out.shape == x.shape and torch.equal(out, padded[..., :18, :21])
