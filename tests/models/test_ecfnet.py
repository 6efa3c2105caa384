import pytest
import torch

import udcbench.models.ecfnet  # noqa: F401  (registers the configurations)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.ecfnet import CONFIGS, ECFNet

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"ecfnet": 16.85e6}


def small_net() -> ECFNet:
    return ECFNet(base_channel=8, num_res=1)


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_counts(name):
    with torch.device("meta"):
        net = ECFNet(**CONFIGS[name])
    count = sum(p.numel() for p in net.parameters())
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = ECFNet(**CONFIGS["ecfnet"]).state_dict()
    expected = {
        "Encoder.0.layers.5.convs.2.conv.0.weight": (24, 72, 3, 3),
        "Encoder.3.layers.0.LFF.weight": (96, 384, 1, 1),
        "Decoder.3.layers.0.convs.0.conv.0.bias": (24,),
        "feat_extract.4.main.0.weight": (96, 96, 4, 4),  # transposed conv: (in, out, k, k)
        "feat_extract.7.main.0.weight": (3, 24, 3, 3),
        "Convs.0.main.0.weight": (96, 192, 1, 1),
        "ConvsOut.2.conv3.main.0.weight": (48, 3, 3, 3),
        "AFFs.0.conv.0.main.0.weight": (24, 264, 1, 1),
        "AFFs.0.conv.1.main.0.weight": (24, 24, 3, 3),
        "AFFs.1.project_in.weight": (1056, 264, 1, 1),
        "AFFs.3.dwconv.weight": (1056, 1, 3, 3),
        "AFFs.3.project_out.weight": (96, 1056, 1, 1),
        "FAM0.merge.main.0.weight": (96, 96, 3, 3),
        "SCM2.main.3.main.0.weight": (45, 24, 1, 1),
        "SCM0.conv.main.0.weight": (96, 96, 1, 1),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "AFFs.1.project_in.bias" not in state  # the gated fusions have no biases
    assert not any("running_mean" in k for k in state)


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = ECFNet(**CONFIGS["ecfnet"]).eval()
    path = tmp_path / "model.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)  # plain state_dict
    model = load_model("ecfnet", weights=path)
    x = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))
    assert model.info.parameters == sum(p.numel() for p in reference.parameters())


def test_four_scales_coarsest_first_and_last_is_residual_on_input():
    torch.manual_seed(0)
    net = small_net().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        outputs = net(x)
        assert [tuple(o.shape[-2:]) for o in outputs] == [(4, 6), (8, 12), (16, 24), (32, 48)]
        for conv in (net.feat_extract[7].main[0],):  # zero the last conv: the full-scale output is the input
            conv.weight.zero_()
            conv.bias.zero_()
        assert torch.equal(net(x)[-1], x)
    assert load_model("ecfnet", weights="random").contract.output_index == -1


def test_contract_is_tone_mapped_range_padded_to_eight():
    contract = load_model("ecfnet", weights="random").contract
    assert contract.value_range == (0.0, 1.0) and contract.tone_mapping is None
    assert contract.padded_size(50, 70) == (56, 72)
