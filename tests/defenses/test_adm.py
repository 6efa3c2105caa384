"""guided-diffusion (ADM) checkpoints as purification priors: architecture, key names, strict loading, refusals."""

import math

import pytest
import torch

from udcbench.defenses.adm import (ADM_CONFIGS, ADM_FLAGS, ADMUNet, AttentionBlock, adm_parameter_count,
                                   parse_adm_config, qkv_attention, timestep_embedding)
from udcbench.defenses.adm_checkpoint import load_adm_prior, save_adm_state_dict
from udcbench.defenses.diffusion import PriorUNet, learned_log_variance
from udcbench.errors import CheckpointError, SpecError

# The flag structure of 256x256_diffusion_uncond.pt at toy width: up/down ResBlocks, scale-shift norm, learned σ,
# heads from num_head_channels, attention at both resolutions.
TINY = ("adm:image_size=32;num_channels=32;num_res_blocks=2;channel_mult=1/2;attention_resolutions=32/16;"
        "num_head_channels=16;learn_sigma=true;resblock_updown=true;use_scale_shift_norm=true")


def tiny_unet(seed=0, extra=""):
    torch.manual_seed(seed)
    return ADMUNet(parse_adm_config(TINY + extra)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    net = tiny_unet()
    path = tmp_path_factory.mktemp("adm") / "x.pt"
    save_adm_state_dict(net, path)
    return net, path


class Payload:
    """A custom class: pickling it puts code references into the file, which weights_only loading refuses."""

    def __init__(self):
        self.weights = torch.zeros(2)


# --- architecture ------------------------------------------------------------------------------------------

def test_the_released_256_uncond_architecture_has_its_known_parameter_count():
    assert adm_parameter_count(ADM_CONFIGS["adm-256-uncond"]) == 552_814_086
    assert adm_parameter_count(ADM_CONFIGS["adm-lsun-256"]) == 552_814_086  # dropout adds no parameters


def test_configs_parse_to_full_flag_sets():
    assert parse_adm_config("adm-256-uncond") == ADM_CONFIGS["adm-256-uncond"]
    assert parse_adm_config("adm-256-uncond:dropout=0.1") == ADM_CONFIGS["adm-lsun-256"]
    flags = parse_adm_config("adm:num_channels=128;num_res_blocks=3,attention_resolutions=16/8;learn_sigma=true")
    assert set(flags) == set(ADM_FLAGS)
    assert (flags["num_channels"], flags["num_res_blocks"], flags["attention_resolutions"]) == (128, 3, (16, 8))
    assert flags["learn_sigma"] is True and flags["image_size"] == 64 and flags["channel_mult"] == ()
    assert parse_adm_config("adm:channel_mult=1-2-2")["channel_mult"] == (1, 2, 2)
    net = ADMUNet(flags)
    assert net.config["channel_mult"] == [1, 2, 3, 4] and net.multiple == 8 and net.out_channels == 6


@pytest.mark.parametrize("updown", [True, False])
def test_state_dict_keys_are_the_official_names(updown):
    keys = set(tiny_unet(extra=f";resblock_updown={updown}").state_dict())
    for key in ("time_embed.0.weight", "time_embed.2.weight", "input_blocks.0.0.weight",
                "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
                "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.0.weight",
                "input_blocks.1.0.out_layers.3.weight", "input_blocks.1.1.norm.weight", "input_blocks.1.1.qkv.weight",
                "input_blocks.1.1.proj_out.weight", "input_blocks.4.0.skip_connection.weight",
                "middle_block.0.in_layers.2.weight", "middle_block.1.qkv.weight", "middle_block.1.proj_out.weight",
                "middle_block.2.out_layers.3.weight", "output_blocks.0.0.skip_connection.weight",
                "out.0.weight", "out.2.weight"):
        assert key in keys, key
    # level 0 → 1 downsampling is input block 3; the last output block of level 1 (index 2) upsamples after attention
    assert ("input_blocks.3.0.in_layers.2.weight" in keys) == updown
    assert ("input_blocks.3.0.op.weight" in keys) == (not updown)
    assert ("output_blocks.2.2.out_layers.3.weight" in keys) == updown
    assert ("output_blocks.2.2.conv.weight" in keys) == (not updown)
    assert not any(".h_upd." in k or ".x_upd." in k or "label_emb" in k for k in keys)
    assert len([k for k in keys if k.startswith("output_blocks.") and k.endswith(".0.in_layers.2.weight")]) == 6


# --- loading -----------------------------------------------------------------------------------------------

def test_a_saved_checkpoint_loads_strictly_and_reproduces_the_network(saved):
    net, path = saved
    prior = load_adm_prior(path, TINY)
    assert isinstance(prior.unet, ADMUNet) and not prior.training and prior.learned_sigma
    assert not any(p.requires_grad for p in prior.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in prior.parameters())
    assert (prior.size, prior.multiple) == (32, 2)
    assert prior.meta == {"source": str(path), "config": "adm", "architecture": "adm"}
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([5, 900])
    with torch.no_grad():
        raw = net(x, t)
        assert raw.shape == (2, 6, 16, 16)
        assert torch.equal(prior.unet(x, t), raw)
        assert torch.equal(prior.predict_noise(x, t), raw[:, :3])
        both = prior.predict(x, t)
    assert both.shape == (2, 6, 16, 16) and torch.equal(both[:, 3:], raw[:, 3:])
    schedule = prior.schedule
    assert (schedule.T, schedule.kind) == (1000, "linear")
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)


def test_dict_configs_nested_state_dicts_and_the_schedule_flags(saved, tmp_path):
    net, _ = saved
    nested = tmp_path / "nested.pt"
    torch.save({"step": 7, "model": {"module." + k: v.half() for k, v in net.state_dict().items()}}, nested)
    flags = {**parse_adm_config(TINY), "diffusion_steps": 4000, "use_fp16": "true"}
    prior = load_adm_prior(nested, flags)
    assert prior.schedule.T == 4000 and prior.schedule.betas[0].item() == pytest.approx(2.5e-5)
    assert prior.schedule.betas[-1].item() == pytest.approx(0.005)
    assert all(p.dtype == torch.float32 for p in prior.parameters())  # a float16 file loads as float32
    cosine = load_adm_prior(nested, {**parse_adm_config(TINY), "noise_schedule": "cosine"})
    assert cosine.schedule.kind == "squaredcos_cap_v2"


# --- the pieces that decide correctness with the released weights -----------------------------------------

def test_timestep_embedding_is_cosines_then_sines():
    freqs = torch.tensor([1.0, 0.1, 0.01, 0.001])
    expected = torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)])
    assert torch.allclose(timestep_embedding(torch.tensor([3]), 8)[0], expected, atol=1e-6)
    odd = timestep_embedding(torch.tensor([3, 4]), 9)
    assert odd.shape == (2, 9) and torch.all(odd[:, -1] == 0)


def per_head_attention(qkv, heads):
    """Plain softmax attention, head by head, with the legacy layout: each head's q, k, v are contiguous."""
    _, width, _ = qkv.shape
    ch = width // (3 * heads)
    outputs = []
    for head in range(heads):
        block = qkv[:, head * 3 * ch:(head + 1) * 3 * ch]
        q, k, v = block[:, :ch], block[:, ch:2 * ch], block[:, 2 * ch:]
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
        outputs.append(torch.einsum("bts,bcs->bct", weight, v))
    return torch.cat(outputs, dim=1)


def test_legacy_attention_splits_heads_first_and_differs_from_the_new_order():
    qkv = torch.randn(2, 3 * 2 * 4, 5, generator=torch.Generator().manual_seed(0))
    legacy = qkv_attention(qkv, heads=2)
    assert torch.allclose(legacy, per_head_attention(qkv, 2), atol=1e-5)
    assert not torch.allclose(qkv_attention(qkv, heads=2, new_order=True), legacy, atol=1e-3)
    assert torch.allclose(qkv_attention(qkv, 1, True), qkv_attention(qkv, 1), atol=1e-6)  # one head: same
    assert AttentionBlock(64, num_heads=1, num_head_channels=16).num_heads == 4
    assert AttentionBlock(64, num_heads=2).num_heads == 2


def test_learned_sigma_endpoints_are_beta_and_the_posterior_variance():
    beta, posterior = torch.tensor(0.02), torch.tensor(0.015)
    v = torch.tensor([1.0, -1.0, 0.0])
    log_var = learned_log_variance(v, beta, posterior)
    assert torch.allclose(log_var[:2], torch.stack([beta.log(), posterior.log()]))
    assert torch.isclose(log_var[2], (beta.log() + posterior.log()) / 2)


# --- refusals ----------------------------------------------------------------------------------------------

def test_a_checkpoint_of_other_flags_names_the_mismatch_and_the_fix(tmp_path):
    path = tmp_path / "other.pt"
    save_adm_state_dict(tiny_unet(extra=";num_res_blocks=1"), path)
    with pytest.raises(CheckpointError, match="missing keys") as caught:
        load_adm_prior(path, TINY)
    assert "input_blocks." in str(caught.value) and "config=adm-256-uncond" in str(caught.value)
    wide = tmp_path / "wide.pt"
    save_adm_state_dict(tiny_unet(extra=";num_channels=64"), wide)
    with pytest.raises(CheckpointError, match="shape mismatches.*num_channels=64.*pass the config="):
        load_adm_prior(wide, TINY)


def test_files_that_are_not_unconditional_adm_state_dicts_are_refused(saved, tmp_path):
    prior_path = tmp_path / "prior.pt"
    torch.save(PriorUNet(base=8, mults=(1, 2)).state_dict(), prior_path)
    with pytest.raises(CheckpointError, match="not a guided-diffusion"):
        load_adm_prior(prior_path, TINY)
    conditional = tmp_path / "cond.pt"
    torch.save({**saved[0].state_dict(), "label_emb.weight": torch.zeros(1000, 128)}, conditional)
    with pytest.raises(CheckpointError, match="class-conditional"):
        load_adm_prior(conditional, TINY)
    pickled = tmp_path / "code.pt"
    torch.save(Payload(), pickled)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_adm_prior(pickled, TINY)


@pytest.mark.parametrize("text, pattern", [
    ("adm-1024", "unknown ADM config.*adm-256-uncond.*adm:flag=value"),
    ("adm:num_chanels=64", "unknown ADM flag.*valid flags:.*num_channels"),
    ("adm:num_channels=lots", "num_channels='lots'.*expected int"),
    ("adm:learn_sigma=maybe", "learn_sigma.*expected true or false"),
    ("adm:attention_resolutions=x/y", "attention_resolutions.*list of numbers"),
    ("adm:class_cond=true", "unconditional"),
    ("adm:noise_schedule=sigmoid", "linear or cosine"),
    ("adm:num_channels", "not flag=value"),
])
def test_bad_configs_are_refused_with_the_fix(text, pattern):
    with pytest.raises(SpecError, match=pattern):
        parse_adm_config(text)


def test_impossible_architectures_are_refused():
    with pytest.raises(SpecError, match="no default channel_mult for image_size=48"):
        ADMUNet(parse_adm_config("adm:image_size=48"))
    with pytest.raises(SpecError, match="must divide image_size"):
        ADMUNet(parse_adm_config("adm:image_size=64;attention_resolutions=24"))
    with pytest.raises(SpecError, match="divide by 32"):
        ADMUNet(parse_adm_config("adm:num_channels=48"))
    with pytest.raises(SpecError, match="divisible by 2"):
        tiny_unet()(torch.zeros(1, 3, 15, 16), torch.tensor([0]))


# --- float16 -----------------------------------------------------------------------------------------------

def cpu_half_conv_works():
    try:
        torch.nn.Conv2d(2, 2, 3).half()(torch.zeros(1, 2, 4, 4, dtype=torch.float16))
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not cpu_half_conv_works(), reason="this torch build has no float16 convolution on CPU")
def test_half_precision_matches_float32_loosely(saved):
    net = tiny_unet()
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([10, 500])
    with torch.no_grad():
        reference = net(x, t)
        net.half_precision()
        half = net(x, t)
    assert net.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert net.middle_block[1].qkv.weight.dtype == torch.float16
    assert net.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # norms stay float32
    assert net.out[2].weight.dtype == torch.float32 and net.time_embed[0].weight.dtype == torch.float32
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - reference).abs().max() < 2e-2 * reference.abs().max()
