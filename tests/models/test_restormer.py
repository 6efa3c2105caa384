import pytest
import torch
from torch.nn import functional as F

import udcbench.models.restormer  # noqa: F401  (registers the configuration)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.restormer import CONFIGS, Attention, LayerNorm, Restormer

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"restormer": 26.13e6}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = Restormer(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = Restormer(**CONFIGS["restormer"]).state_dict()
    expected = {
        "patch_embed.proj.weight": (48, 3, 3, 3),
        "encoder_level1.0.norm1.body.weight": (48,),
        "encoder_level1.0.norm1.body.bias": (48,),
        "encoder_level1.3.attn.temperature": (1, 1, 1),
        "encoder_level2.5.attn.qkv.weight": (288, 96, 1, 1),
        "encoder_level3.0.attn.qkv_dwconv.weight": (576, 1, 3, 3),
        "latent.7.attn.temperature": (8, 1, 1),
        "latent.7.ffn.project_in.weight": (2 * int(384 * 2.66), 384, 1, 1),
        "latent.0.ffn.project_out.weight": (384, int(384 * 2.66), 1, 1),
        "down1_2.body.0.weight": (24, 48, 3, 3),
        "up4_3.body.0.weight": (768, 384, 3, 3),
        "reduce_chan_level3.weight": (192, 384, 1, 1),
        "reduce_chan_level2.weight": (96, 192, 1, 1),
        "decoder_level1.3.attn.project_out.weight": (96, 96, 1, 1),
        "refinement.3.ffn.dwconv.weight": (2 * int(96 * 2.66), 1, 3, 3),
        "output.weight": (3, 96, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 494
    assert not any(k.endswith("qkv.bias") or k == "output.bias" or k.startswith("skip_conv") for k in state)
    with torch.device("meta"):
        assert set(state) == {k for k, _ in Restormer(**CONFIGS["restormer"]).named_parameters()}  # no buffers


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = Restormer(**CONFIGS["restormer"]).eval()
    with torch.no_grad():  # move the ones-initialised temperatures and norms off their defaults
        for name, p in reference.named_parameters():
            if name.endswith(("temperature", "body.weight", "body.bias")):
                p.add_(0.1 * torch.randn_like(p))
    wrapped = {"params": {f"module.{k}": v for k, v in reference.state_dict().items()}}
    path = tmp_path / "deraining.pth"
    torch.save(wrapped, path)
    model = load_model("restormer", weights=path)
    x = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())
    assert model.info.family == "restormer"


def test_contract_reflect_pads_to_multiple_of_eight():
    contract = load_model("restormer", weights="random").contract
    assert contract.value_range == (0.0, 1.0) and contract.tone_mapping is None
    assert contract.pad_mode == "reflect" and contract.pad_multiple == 8 and not contract.square
    assert contract.padded_size(50, 70) == (56, 72)


def test_layer_norm_matches_the_paper_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7)
    for kind in ("WithBias", "BiasFree"):
        norm = LayerNorm(6, kind)
        with torch.no_grad():
            for p in norm.parameters():
                p.copy_(torch.randn_like(p))
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, unbiased=False)
        weight = norm.body.weight.view(1, -1, 1, 1)
        if kind == "WithBias":
            expected = (x - mean) / torch.sqrt(var + 1e-5) * weight + norm.body.bias.view(1, -1, 1, 1)
        else:
            expected = x / torch.sqrt(var + 1e-5) * weight
            assert not hasattr(norm.body, "bias")
        torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)


def test_mdta_attends_across_channels_per_head():
    torch.manual_seed(0)
    attn = Attention(dim=8, heads=2, bias=False)
    with torch.no_grad():
        attn.temperature.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    x = torch.randn(1, 8, 6, 5)
    qkv = attn.qkv_dwconv(attn.qkv(x))
    q, k, v = (t.flatten(2) for t in qkv.chunk(3, dim=1))  # (1, 8, 30)
    heads = []
    for h in range(2):
        rows = slice(4 * h, 4 * h + 4)
        qh, kh = F.normalize(q[0, rows], dim=-1), F.normalize(k[0, rows], dim=-1)
        weights = (qh @ kh.T * attn.temperature[h, 0, 0]).softmax(-1)  # 4×4 channel map
        heads.append(weights @ v[0, rows])
    expected = attn.project_out(torch.cat(heads).view(1, 8, 6, 5))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_global_residual_and_dual_pixel_variant():
    net = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2))
    with torch.no_grad():
        net.output.weight.zero_()
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(net(x), x)  # a zero output conv leaves only the image residual
    dual = Restormer(inp_channels=6, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
                     dual_pixel_task=True)
    assert "skip_conv.weight" in dual.state_dict()
    assert dual(torch.rand(1, 6, 16, 16)).shape == (1, 3, 16, 16)
