import pytest
import torch

import udcbench.models.udcunet  # noqa: F401  (registers the model)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.udcunet import CONFIGS, PSF_CODE, UDCUNet, dynamic_filter

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"udcunet": 14.06e6}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = UDCUNet(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)
    assert count == 14_057_091


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = UDCUNet().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 500
    expected = {
        "cond_head.0.weight": (32, 3, 3, 3), "cond_first.1.conv2.weight": (32, 32, 3, 3),
        "CondNet0.6.weight": (32, 32, 1, 1), "CondNet2.2.weight": (32, 32, 3, 3), "CondNet3.6.weight": (256, 32, 1, 1),
        "k_head.0.weight": (32, 8, 3, 3), "KNet0.6.weight": (288, 32, 1, 1), "KNet3.6.weight": (2304, 32, 1, 1),
        "conv_first.0.weight": (32, 3, 3, 3), "enconv_layer1.1.sft2.SFT_shift_conv1.weight": (64, 32, 1, 1),
        "enconv_layer2.0.sft1.SFT_scale_conv0.weight": (32, 128, 1, 1), "down_conv2.weight": (256, 128, 3, 3),
        "Bottom_conv.7.conv2.weight": (256, 256, 3, 3), "up_conv2.0.weight": (512, 256, 3, 3),
        "up_conv0.0.weight": (128, 64, 3, 3), "deconv_layer0.1.conv1.bias": (32,), "conv_last.weight": (3, 32, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert not any("psf" in k.lower() for k in shapes)  # the PSF code is built in forward, not stored


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = UDCUNet().eval()
    decoy = UDCUNet().state_dict()  # BasicSR saves both; the EMA weights must win
    wrapped = {"params": {f"module.{k}": v for k, v in decoy.items()},
               "params_ema": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    path = tmp_path / "net_g_600000.pth"
    torch.save(wrapped, path)
    model = load_model("udcunet", weights=path)
    assert model.info.family == "udcunet"
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())
    x = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))


def test_contract_hdr_tone_mapped_and_zero_residual_is_identity():
    model = load_model("udcunet", weights="random")
    contract = model.contract
    assert contract.value_range == (0.0, 500.0) and contract.tone_mapping == "x/(x+0.25)"
    assert contract.pad_multiple == 8 and contract.extra_inputs == () and contract.output_index is None
    # relu(x + residual) with a zero last conv is the identity on HDR, so the wrapper must return its input
    torch.nn.init.zeros_(model.net.conv_last.weight)
    torch.nn.init.zeros_(model.net.conv_last.bias)
    u = torch.rand(1, 3, 24, 30) * 0.99
    with torch.no_grad():
        assert torch.allclose(model(u), u, atol=1e-6)


def test_output_is_non_negative_hdr():
    torch.manual_seed(0)
    net = UDCUNet().eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.conv_last.weight, std=1.0)
        out = net(torch.rand(1, 3, 16, 16) * 500)
    assert (out >= 0).all() and (out == 0).any()


def test_dynamic_filter_matches_explicit_loop():
    g = torch.Generator().manual_seed(1)
    feat, k = torch.randn(2, 3, 5, 6, generator=g), 3
    kernel = torch.randn(2, 3 * k * k, 5, 6, generator=g)
    padded = torch.nn.functional.pad(feat, (1, 1, 1, 1), mode="replicate")
    expected = torch.zeros_like(feat)
    for c in range(3):
        for i in range(k):
            for j in range(k):
                expected[:, c] += kernel[:, c * k * k + i * k + j] * padded[:, c, i:i + 5, j:j + 6]
    assert torch.allclose(dynamic_filter(feat, kernel, k), expected, atol=1e-5)


def test_psf_code_is_the_fixed_constant_in_input_dtype():
    net = UDCUNet(nf=8, depths=(1,) * 7)
    x = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    code = net.psf_code(x)
    assert code.shape == (2, 5, 8, 8) and code.dtype == torch.float64
    expected = torch.tensor(PSF_CODE, dtype=torch.float32).double()
    assert torch.equal(code[1, :, 3, 4], expected)
    assert PSF_CODE == (-0.0020, 0.0352, -2.0215e-05, 0.0060, 9.4328e-05)
    assert net.double()(x.abs()).dtype == torch.float64
