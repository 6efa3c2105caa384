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


# --- the training patch (`train_patch`, the official img_size): which stages are one unshifted window ---

STAGES = {"encoderlayer_0": 0, "encoderlayer_1": 1, "encoderlayer_2": 2, "encoderlayer_3": 3, "conv": 4,
          "decoderlayer_0": 3, "decoderlayer_1": 2, "decoderlayer_2": 1, "decoderlayer_3": 0}


def authors_rule(train_patch, level, index, win=8):
    """Official LeWinTransformerBlock: if min(input_resolution) <= win_size: shift 0, window = resolution."""
    side = train_patch // 2 ** level
    return (side, 0) if side <= win else (win, 0 if index % 2 == 0 else win // 2)


def block_settings(net):
    return {f"{stage}.blocks.{i}": (block.win, block.shift)
            for stage in STAGES for i, block in enumerate(getattr(net, stage).blocks)}


def build(name, train_patch):
    return Uformer(**{**CONFIGS[name], "img_size": train_patch})


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("train_patch", [64, 128, 256, 512])
def test_block_windows_and_shifts_follow_the_authors_rule(name, train_patch):
    with torch.device("meta"):
        settings = block_settings(build(name, train_patch))
    for key, setting in settings.items():
        stage, _, index = key.split(".")
        assert setting == authors_rule(train_patch, STAGES[stage], int(index)), key


@pytest.mark.parametrize("patches, differing", [
    ((128, 256), {"conv.blocks.1"}),  # bottleneck side 8 = window: unshifted at 128
    ((64, 128), {"encoderlayer_3.blocks.1", "decoderlayer_0.blocks.1", "conv.blocks.0", "conv.blocks.1"}),
    ((256, 512), set()),  # no stage at most one window in either
])
def test_uformer_t_blocks_differ_exactly_in_stages_at_most_one_window(patches, differing):
    with torch.device("meta"):
        first, second = (block_settings(build("uformer-t", p)) for p in patches)
    assert {key for key in first if first[key] != second[key]} == differing
    for key in differing:  # all in stages the smaller patch makes one window
        assert patches[0] // 2 ** STAGES[key.split(".")[0]] <= 8


def same_weights(name, patches, seed=0):
    torch.manual_seed(seed)
    nets = [build(name, patches[0]).eval()]
    for patch in patches[1:]:
        net = build(name, patch).eval()
        net.load_state_dict(nets[0].state_dict(), strict=True)  # names and shapes do not depend on 128 vs ≥256
        nets.append(net)
    return nets


def test_same_weights_at_train_patch_128_and_256_compute_differently_only_through_the_bottleneck():
    at128, at256 = same_weights("uformer-nano", (128, 256))
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out128, out256 = at128(x), at256(x)
        assert (out128 - out256).abs().max() > 1e-6
        at256.conv.blocks[1].shift = 0  # apply the authors' rule by hand to the one block it changes
        assert torch.equal(at256(x), out128)


def test_same_weights_at_train_patch_256_and_512_compute_identically():
    at256, at512 = same_weights("uformer-nano", (256, 512))
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(at256(x), at512(x))


def test_bundled_nano_is_built_with_its_training_patch_128():
    from safetensors.torch import load_file

    from udcbench.models import bundled_weights

    model = load_model("uformer-nano")
    assert model.info.name == "uformer-nano" and model.info.extra["options"] == {"train_patch": 128}
    direct = Uformer(**{**CONFIGS["uformer-nano"], "img_size": 128}).eval()
    direct.load_state_dict(load_file(bundled_weights("uformer-nano")), strict=True)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.net(x), direct(x))


def test_release_configurations_default_to_the_official_train_ps_128():
    from udcbench.models.uformer import TRAIN_PATCH
    from udcbench.registry import MODELS

    assert TRAIN_PATCH == 128
    for name in CONFIGS:
        assert MODELS.get(name).info["options"]["train_patch"].default == 128


def test_official_checkpoint_loads_under_the_train_patch_it_names(tmp_path):
    torch.manual_seed(3)
    reference = build("uformer-t", 256).eval()
    path = tmp_path / "Uformer_T_256.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = load_model("uformer-t:train_patch=256", weights=path)
    assert model.info.name == "uformer-t" and model.info.extra["options"] == {"train_patch": 256}
    assert block_settings(model.net) == block_settings(reference)
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    default = load_model("uformer-t", weights=path)  # same shapes: only the option tells 128 from 256
    assert default.info.extra["options"] == {"train_patch": 128} and default.net.conv.blocks[1].shift == 0


def test_checkpoint_trained_at_64_names_its_train_patch(tmp_path):
    from udcbench.errors import CheckpointError

    torch.manual_seed(4)
    at64 = build("uformer-nano", 64)
    assert tuple(at64.conv.blocks[0].attn.relative_position_bias_table.shape) == (49, 8)  # window 4
    path = tmp_path / "nano64.pth"
    torch.save({"state_dict": at64.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"train_patch=64: pass --model uformer-nano:train_patch=64"):
        load_model("uformer-nano", weights=path)
    assert load_model("uformer-nano:train_patch=64", weights=path).info.extra["options"] == {"train_patch": 64}
    path128 = tmp_path / "nano128.pth"
    torch.save({"state_dict": build("uformer-nano", 128).state_dict()}, path128)
    with pytest.raises(CheckpointError, match=r"--model uformer-nano:train_patch=128"):
        load_model("uformer-nano:train_patch=64", weights=path128)


@pytest.mark.parametrize("value, reason", [
    ("100", "not all whole"), ("136", "not all whole"), ("192", "12 is neither a multiple of the 8-px window"),
    ("32", "narrower than the 8-px window its modulator needs"), ("0", "positive"), ("abc", "whole number"),
    ("128.0", "whole number"),
])
def test_train_patch_values_the_authors_could_not_train_at_are_refused(value, reason):
    from udcbench.errors import SpecError

    with pytest.raises(SpecError, match=reason) as caught:
        load_model(f"uformer-t:train_patch={value}", weights="random")
    message = str(caught.value)
    assert "\n" not in message and "64 or a multiple of 128" in message
    assert "e.g. --model uformer-t:train_patch=128" in message


def test_uformer_constructor_refuses_untrainable_patches():
    with pytest.raises(ValueError, match="img_size=200"):
        Uformer(img_size=200)


def test_the_compiled_graphs_attention_layout_computes_the_eager_values(monkeypatch):
    """The branch torch.compile traces (bias by one-hot columns, contiguous kᵀ and v) gives the eager output and
    input gradient: bias entries exactly, the matmuls within float rounding."""
    model = load_model("uformer-nano")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)

    def forward_backward():
        out = model(x, clamp=False)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), grad

    eager_out, eager_grad = forward_backward()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced_out, traced_grad = forward_backward()
    assert torch.allclose(traced_out, eager_out, rtol=0, atol=1e-6)
    # float32 gradients through the whole network: the two layouts sum in different orders, which moves
    # single values by a few ulps (1.3e-5 relative seen on a 2-core CPU, more in a full-suite process), near
    # zero relative to the largest; a layout bug moves them by O(1)
    assert torch.allclose(traced_grad, eager_grad, rtol=1e-4, atol=1e-5 * eager_grad.abs().max().item())
    attention = next(m for m in model.modules() if type(m).__name__ == "WindowAttention")
    table, index = attention.relative_position_bias_table, attention.relative_position_index.view(-1)
    one_hot = table.t() @ (torch.arange(len(table))[:, None] == index).to(table.dtype)
    assert torch.equal(one_hot, table[index].t())
