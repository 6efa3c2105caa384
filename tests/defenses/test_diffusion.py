import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from udcbench.defenses.diffusion import (DiffusionPrior, PriorUNet, Schedule, load_prior, save_prior,
                                         timestep_embedding)
from udcbench.defenses.prior_training import train_prior
from udcbench.defenses.purify import PurifyDefense
from udcbench.errors import CheckpointError, MissingExtraError, SpecError

TINY = {"base": 8, "mults": (1, 2)}


def tiny_prior(seed=0, size=32):
    torch.manual_seed(seed)
    return DiffusionPrior(PriorUNet(**TINY), size=size).eval()


def clean_images(count=3, size=40, seed=0):
    """Smooth random images (low-frequency structure, like photos at this scale)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    return list(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))


# --- the forward process ----------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0, 30, 300, 999])
def test_q_sample_has_the_closed_form_mean_and_variance(t):
    schedule = Schedule()
    x0 = torch.linspace(-1, 1, 12).reshape(1, 3, 2, 2)
    draws = 20000
    noise = torch.randn(draws, 3, 2, 2, generator=torch.Generator().manual_seed(t))
    x_t = schedule.q_sample(x0.expand(draws, -1, -1, -1), t, noise)
    alpha_bar = schedule.alphas_cumprod[t].item()
    standard_error = math.sqrt((1 - alpha_bar) / draws)
    assert (x_t.mean(0) - math.sqrt(alpha_bar) * x0[0]).abs().max() < 5 * standard_error
    assert (x_t.var(0) / (1 - alpha_bar) - 1).abs().max() < 0.06  # 5 σ of a 20000-draw variance estimate


def test_q_sample_takes_a_timestep_per_image():
    schedule = Schedule()
    x0, noise = torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 3, 4, 4)
    batched = schedule.q_sample(x0, torch.tensor([0, 50, 999]), noise)
    for index, t in enumerate([0, 50, 999]):
        assert torch.allclose(batched[index], schedule.q_sample(x0[index:index + 1], t, noise[index:index + 1])[0])


def test_linear_schedule_values():
    schedule = Schedule()
    alpha_bar = schedule.alphas_cumprod
    assert alpha_bar.dtype == torch.float64 and len(alpha_bar) == 1000
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert alpha_bar[0].item() == pytest.approx(1 - 1e-4)
    assert 3.9e-5 < alpha_bar[999].item() < 4.1e-5  # 4.036e-5: the signal is gone at t = T − 1
    assert alpha_bar[29].item() == pytest.approx(math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 999) for i in range(30)))


def test_other_schedules_match_their_definitions():
    scaled = Schedule(beta_start=0.00085, beta_end=0.012, kind="scaled_linear")
    assert scaled.betas[0].item() == pytest.approx(0.00085) and scaled.betas[-1].item() == pytest.approx(0.012)
    root_start, root_end = 0.00085 ** 0.5, 0.012 ** 0.5
    assert scaled.betas[500].item() == pytest.approx((root_start + 500 / 999 * (root_end - root_start)) ** 2)
    cosine = Schedule(kind="squaredcos_cap_v2")

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cosine.alphas_cumprod[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    assert bool((cosine.alphas_cumprod[1:] < cosine.alphas_cumprod[:-1]).all())
    custom = Schedule(betas=[0.1, 0.2])
    assert custom.T == 2 and custom.alphas_cumprod[1].item() == pytest.approx(0.72)
    with pytest.raises(SpecError, match="squaredcos_cap_v2"):
        Schedule(kind="sigmoid")
    with pytest.raises(SpecError, match="beta_start"):
        Schedule(beta_start=0.5, beta_end=1.5)


# --- the network --------------------------------------------------------------------------------------------

def test_default_unet_size_and_shapes():
    unet = PriorUNet()
    assert sum(p.numel() for p in unet.parameters()) == 1_063_651  # regression guard
    assert unet.multiple == 4
    with torch.no_grad():
        assert unet(torch.randn(2, 3, 64, 48), torch.tensor([3, 700])).shape == (2, 3, 64, 48)
    with pytest.raises(SpecError, match="divisible by 4"):
        unet(torch.randn(1, 3, 30, 32), torch.tensor([1]))
    with pytest.raises(SpecError, match="groups"):
        PriorUNet(base=12)


def test_time_embedding_separates_timesteps():
    embedding = timestep_embedding(torch.tensor([0, 1, 500]), 32)
    assert embedding.shape == (3, 32)
    assert torch.equal(embedding[0], torch.cat([torch.zeros(16), torch.ones(16)]))
    unet, x = PriorUNet(**TINY), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(unet(x, torch.tensor([10])), unet(x, torch.tensor([900])))


def test_v_prediction_is_converted_to_noise():
    schedule = Schedule()
    x0, noise, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8), torch.tensor([40, 600])
    x_t = schedule.q_sample(x0, t, noise)
    alpha_bar = schedule.alpha_bar(t, x0)

    class Velocity(torch.nn.Module):
        def forward(self, x, timesteps):
            return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    prior = DiffusionPrior(Velocity(), schedule, prediction_type="v_prediction")
    assert torch.allclose(prior.predict_noise(x_t, t), noise, atol=1e-5)
    with pytest.raises(CheckpointError, match="epsilon"):
        DiffusionPrior(Velocity(), prediction_type="sample")


# --- saving and loading ---------------------------------------------------------------------------------------

def test_save_load_round_trip_is_bit_identical(tmp_path):
    prior = tiny_prior(size=32)
    path = tmp_path / "prior.safetensors"
    save_prior(prior, path, meta={"note": "tiny"})
    loaded = load_prior(path)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 800])
    with torch.no_grad():
        assert torch.equal(loaded.predict_noise(x, t), prior.predict_noise(x, t))
    assert loaded.size == 32 and loaded.multiple == 2 and loaded.meta["note"] == "tiny"
    assert loaded.unet.config == prior.unet.config and not loaded.training
    assert torch.equal(loaded.schedule.alphas_cumprod, prior.schedule.alphas_cumprod)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_prior(tmp_path / "absent.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a udcbench diffusion prior.*save_prior"):
        load_prior(plain)
    pickle_file = tmp_path / "prior.pth"
    torch.save({}, pickle_file)
    with pytest.raises(CheckpointError, match="is a torch checkpoint; say which guided-diffusion architecture.*"
                                              "config=adm-256-uncond"):
        load_prior(pickle_file)
    with pytest.raises(SpecError, match="config= describes guided-diffusion .pt checkpoints"):
        PurifyDefense(f"prior={plain},config=adm-256-uncond")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"not a diffusers prior directory \(it holds: notes.txt\)"):
        load_prior(tmp_path / "folder")


def test_mismatched_state_names_the_keys(tmp_path):
    prior, path = tiny_prior(), tmp_path / "prior.safetensors"
    save_prior(prior, path)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        header, state = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    state["extra.weight"] = state.pop("conv_in.weight")
    save_file(state, str(path), metadata=header)
    with pytest.raises(CheckpointError, match=r"1 missing keys: conv_in.weight; 1 unexpected keys: extra.weight"):
        load_prior(path)
    header["unet"] = json.dumps({"base": 16, "mults": [1, 2]})
    state["conv_in.weight"] = state.pop("extra.weight")
    save_file(state, str(path), metadata=header)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_prior(path)
    with pytest.raises(SpecError, match="safetensors"):
        save_prior(prior, tmp_path / "prior.pt")


# --- training -------------------------------------------------------------------------------------------------

def denoising_loss(prior, images):
    generator = torch.Generator().manual_seed(123)
    x0 = torch.stack([image[:, :32, :32] for image in images]) * 2 - 1
    t = torch.tensor([20, 100, 300])[: len(x0)]
    noise = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        return torch.nn.functional.mse_loss(prior.predict_noise(prior.schedule.q_sample(x0, t, noise), t), noise).item()


def test_training_lowers_the_denoising_loss():
    images = clean_images()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        before = DiffusionPrior(PriorUNet(**TINY))
    trained = train_prior(images, steps=30, batch_size=8, crop=32, lr=2e-3, seed=0, ema=0.9, unet=TINY)
    assert denoising_loss(trained, images) < 0.8 * denoising_loss(before, images)  # measured 0.60–0.63 over seeds 0–2
    assert trained.size == 32 and trained.meta["steps"] == "30" and not trained.training


def test_training_is_deterministic_for_a_seed():
    images = clean_images()
    losses = []
    runs = [train_prior(images, steps=3, batch_size=4, crop=32, seed=seed, unet=TINY,
                        progress=lambda step, loss: losses.append(loss)) for seed in (5, 5, 6)]
    first, again, other = (run.unet.state_dict() for run in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert len(losses) == 9 and losses[:3] == losses[3:6]


def test_training_validates_its_inputs():
    with pytest.raises(SpecError, match="lower crop"):
        train_prior(clean_images(size=24), steps=1, crop=32, unet=TINY)
    with pytest.raises(SpecError, match=r"\(3, H, W\)"):
        train_prior([torch.rand(32, 32)], steps=1, crop=32, unet=TINY)
    with pytest.raises(SpecError, match="steps"):
        train_prior(clean_images(), steps=0, unet=TINY)


# --- diffusers directories --------------------------------------------------------------------------------------

def write_diffusers_dir(root, flat=False, prediction_type="epsilon"):
    """A tiny UNet2DModel + DDPMScheduler saved the way diffusers saves pipelines (or flat, like google/ddpm-*)."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.0002, beta_end=0.015, prediction_type=prediction_type)
    unet.save_pretrained(root if flat else root / "unet")
    scheduler.save_pretrained(root if flat else root / "scheduler")
    return unet, scheduler


def test_diffusers_directory_or_a_clear_missing_extra_error(tmp_path):
    if importlib.util.find_spec("diffusers") is None:
        (tmp_path / "unet").mkdir()
        (tmp_path / "scheduler").mkdir()
        (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
        (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
        (tmp_path / "scheduler" / "scheduler_config.json").write_text("{}")
        with pytest.raises(MissingExtraError, match=r"pip install -c constraints.txt 'udcbench\[diffusers\]'"):
            load_prior(tmp_path)
        return
    unet, scheduler = write_diffusers_dir(tmp_path / "pipeline")
    prior = load_prior(tmp_path / "pipeline")
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.allclose(prior.predict_noise(x, t), unet(x, t).sample, atol=1e-5)
    assert prior.size == 32 and prior.multiple == 2 and prior.meta["diffusers"]
    assert torch.allclose(prior.schedule.alphas_cumprod.float(), scheduler.alphas_cumprod, rtol=1e-5)

    write_diffusers_dir(tmp_path / "flat", flat=True, prediction_type="v_prediction")
    assert load_prior(tmp_path / "flat").prediction_type == "v_prediction"

    write_diffusers_dir(tmp_path / "sample", prediction_type="sample")
    with pytest.raises(CheckpointError, match="prediction_type 'sample' is not supported"):
        load_prior(tmp_path / "sample")
    weights = tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    state = {k: v for k, v in unet.state_dict().items() if k != "conv_in.bias"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    with pytest.raises(CheckpointError, match="1 missing keys: conv_in.bias"):
        load_prior(tmp_path / "pipeline")
    config_path = tmp_path / "pipeline" / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "block_out_channels": [16, 16]}))
    with pytest.raises(CheckpointError, match=str(tmp_path / "pipeline" / "unet")):
        load_prior(tmp_path / "pipeline")
