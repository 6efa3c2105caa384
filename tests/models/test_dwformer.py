import pytest
import torch

import udcbench.models.dwformer  # noqa: F401  (registers the configurations)
from udcbench.models import load_model
from udcbench.models.base import RestorationModel
from udcbench.models.dwformer import CONFIGS, DWFormer

torch.set_num_threads(1)

OFFICIAL_PARAMETERS = {"dwformer": 1.45e6}


def _count(name):
    with torch.device("meta"):
        net = DWFormer(**CONFIGS[name])
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMETERS))
def test_release_parameter_count(name):
    count = _count(name)
    assert count == 1_447_047
    assert round(count / 1e4) == round(OFFICIAL_PARAMETERS[name] / 1e4)


def test_nano_is_small():
    assert 100_000 <= _count("dwformer-nano") <= 400_000


def test_official_state_dict_layout():
    with torch.device("meta"):
        state = DWFormer(**CONFIGS["dwformer"]).state_dict()
    shapes = {
        "downproj1.weight": (24, 3, 3, 3), "downproj2.weight": (48, 24, 2, 2), "downproj3.weight": (96, 48, 2, 2),
        "upproj4.0.weight": (192, 96, 1, 1), "fuse1.0.weight": (48, 96, 3, 3), "upproj5.0.weight": (96, 48, 1, 1),
        "fuse2.0.weight": (24, 48, 3, 3), "out.weight": (3, 24, 3, 3),
        "block1.blocks.7.inter.0.running_var": (24,), "block1.blocks.0.inter.0.num_batches_tracked": (),
        "block1.blocks.0.inter.2.weight": (24, 1, 5, 5), "block3.blocks.0.inter.4.pwconv.weight": (1, 96, 1, 1),
        "block3.blocks.0.inter.4.pwconv.bias": (1,), "block3.blocks.0.inter.4.mlp.0.weight": (96, 96),
        "block3.blocks.0.inter.4.mlp.2.weight": (96, 96), "block3.blocks.7.inter.5.weight": (96, 96, 1, 1),
        "block2.blocks.0.intra.0.running_mean": (48,), "block2.blocks.0.intra.1.weight": (192, 48, 1, 1),
        "block5.blocks.5.intra.3.weight": (24, 48, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "block4.blocks.6.inter.0.weight" not in state and "block3.blocks.0.inter.4.mlp.0.bias" not in state
    assert len(state) == 880  # 36 blocks × 24 entries + 16 tensors of the stem, up, fuse and out convs


def _with_random_bn_stats(net):
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
            module.num_batches_tracked.fill_(1234)
    return net


def test_official_checkpoint_wrapping_loads_bit_identical(tmp_path):
    torch.manual_seed(3)
    reference = _with_random_bn_stats(DWFormer(**CONFIGS["dwformer"])).eval()
    wrapped = {"epoch": 300, "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
               "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "dwformer.pth"
    torch.save(wrapped, path)
    model = load_model("dwformer", weights=path)
    assert not model.training and not model.net.training
    assert int(model.net.block1.blocks[0].inter[0].num_batches_tracked) == 1234
    x = torch.rand(1, 3, 30, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), RestorationModel(reference, model.info)(x))
    assert model.info.parameters == 1_447_047


def test_eval_mode_uses_running_stats():
    # In eval mode a sample's output does not depend on the rest of the batch (BatchNorm uses running stats).
    torch.manual_seed(0)
    net = _with_random_bn_stats(DWFormer(**CONFIGS["dwformer-nano"])).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    buffers = dict(net.named_buffers())
    assert "block1.blocks.0.inter.0.num_batches_tracked" in buffers and len(buffers) == 3 * 2 * 10


def test_global_gate_pools_by_spatial_sum_as_released():
    # The released softmax runs over a singleton axis, so the pooling weights are all 1 and pwconv is inert.
    from udcbench.models.dwformer import GlobalContext

    torch.manual_seed(0)
    gate = GlobalContext(8, ratio=1)
    x = torch.rand(2, 8, 6, 5)
    with torch.no_grad():
        expected = x * gate.mlp(x.sum(dim=(2, 3))).view(2, 8, 1, 1)
        assert torch.allclose(gate(x), expected, atol=1e-6)
        gate.pwconv.weight.normal_()
        gate.pwconv.bias.fill_(3.0)
        assert torch.allclose(gate(x), expected, atol=1e-6)
