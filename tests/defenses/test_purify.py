import math

import pytest
import torch
from torch import nn

from udcbench.defenses.base import DefenseComponent
from udcbench.defenses.diffusion import DiffusionPrior, PriorUNet, Schedule
from udcbench.defenses.tiling import predict_noise_tiled
from udcbench.defenses.purify import (PurifyDefense, purify, reverse_timesteps,
                                      visited_timesteps)
from udcbench.errors import SpecError


@pytest.fixture
def prior():
    torch.manual_seed(0)
    prior = DiffusionPrior(PriorUNet(base=8, mults=(1, 2)), size=32).eval()
    for parameter in prior.parameters():
        parameter.requires_grad_(False)
    return prior


@pytest.fixture
def image():
    generator = torch.Generator().manual_seed(3)
    coarse = torch.rand(2, 3, 8, 8, generator=generator)
    return nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class Local(nn.Module):
    """A per-pixel (1×1) noise predictor: tiling cannot change its output."""

    multiple = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.mix = nn.Conv2d(3, 3, 1)

    def forward(self, x, t):
        return 0.5 * self.mix(x) + t.float()[:, None, None, None] / 1000


class Oracle(nn.Module):
    """Predicts the exact noise of x_t for a known clean image; records every x_t it sees."""

    multiple = 1

    def __init__(self, clean, schedule):
        super().__init__()
        self.clean, self.schedule, self.seen = clean * 2 - 1, schedule, []

    def forward(self, x, t):
        self.seen.append((int(t[0]), x.clone()))
        alpha_bar = self.schedule.alpha_bar(t, x)
        return (x - alpha_bar.sqrt() * self.clean) / (1 - alpha_bar).sqrt()


def test_t_star_zero_returns_the_input_exactly(prior, image):
    assert purify(prior, image, t_star=0) is image
    assert torch.equal(PurifyDefense("t=0", prior=prior).transform(image, seeded()), image)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_seeded_determinism(prior, image, sampler):
    first = purify(prior, image, 30, sampler=sampler, generator=seeded(0))
    assert torch.equal(first, purify(prior, image, 30, sampler=sampler, generator=seeded(0)))
    assert not torch.allclose(first, purify(prior, image, 30, sampler=sampler, generator=seeded(1)))
    assert first.shape == image.shape and first.min() >= 0 and first.max() <= 1


def test_larger_t_star_moves_further_from_the_input(prior, image):
    distances = [(purify(prior, image, t, generator=seeded()) - image).abs().mean().item() for t in (10, 50, 200)]
    assert distances[0] < distances[1] < distances[2]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_perfect_noise_predictor_recovers_the_clean_image(image, sampler):
    schedule = Schedule()
    oracle = DiffusionPrior(Oracle(image, schedule), schedule, size=32)
    purified = purify(oracle, image, 200, steps=3, sampler=sampler, generator=seeded())
    assert torch.allclose(purified, image, atol=1e-4)
    assert [t for t, _ in oracle.unet.seen] == [200, 133, 66]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_intermediate_states_follow_the_forward_marginals(sampler):
    """With exact noise predictions each x_s of the reverse chain is distributed as q(x_s | x0) — this checks
    the DDPM posterior mean and variance of the strided chain, and DDIM's update."""
    schedule, draws = Schedule(), 6000
    clean = torch.linspace(0.1, 0.9, 3).reshape(1, 3, 1, 1).expand(draws, -1, -1, -1)
    oracle = DiffusionPrior(Oracle(clean, schedule), schedule, size=1)
    purify(oracle, clean, 300, steps=2, sampler=sampler, generator=seeded(), overlap=0)
    (t_star, start), (t, middle) = oracle.unet.seen
    assert (t_star, t) == (300, 150)
    for x, step in ((start, t_star), (middle, t)):
        alpha_bar = schedule.alphas_cumprod[step].item()
        expected_mean = math.sqrt(alpha_bar) * (clean[0] * 2 - 1)
        assert (x.mean(0) - expected_mean).abs().max() < 5 * math.sqrt((1 - alpha_bar) / draws)
        assert (x.var(0) / (1 - alpha_bar) - 1).abs().max() < 0.1


def test_reverse_timesteps():
    assert reverse_timesteps(30, 2) == [30, 15]
    assert reverse_timesteps(30, 1) == [30]
    assert reverse_timesteps(10, 10) == list(range(10, 0, -1))


def test_ddim_with_every_step_and_with_two(prior, image):
    full = purify(prior, image, 10, steps=10, generator=seeded())
    short = purify(prior, image, 10, steps=2, generator=seeded())
    assert full.shape == short.shape == image.shape and torch.isfinite(full).all()


def test_tiled_equals_untiled_for_a_local_prior():
    local = DiffusionPrior(Local(), size=32)
    big = torch.rand(2, 3, 96, 80, generator=seeded(4))
    tiled = purify(local, big, 50, sampler="ddpm", generator=seeded())
    whole = purify(local, big, 50, sampler="ddpm", generator=seeded(), tile=96)
    no_overlap = purify(local, big, 50, sampler="ddpm", generator=seeded(), overlap=0)
    assert tiled.shape == big.shape
    assert (tiled - whole).abs().max() < 1e-5 and (tiled - no_overlap).abs().max() < 1e-5


def test_tile_blending_is_a_partition_of_unity(prior):
    class Constant(nn.Module):
        multiple = 1

        def forward(self, x, t):
            return torch.full_like(x, 0.25)

    constant = DiffusionPrior(Constant(), size=32)
    for overlap in (0, 5, 16, 24):
        assert torch.allclose(predict_noise_tiled(constant, torch.zeros(1, 3, 75, 96), 5, 32, overlap),
                              torch.full((1, 3, 75, 96), 0.25))


def test_tiles_on_a_real_unet_stay_close_to_one_pass(prior):
    big = nn.functional.interpolate(torch.rand(2, 3, 12, 10, generator=seeded(5)), size=(96, 80), mode="bilinear")
    tiled = purify(prior, big, 50, generator=seeded())
    whole = purify(prior, big, 50, generator=seeded(), tile=96)
    assert tiled.shape == big.shape
    assert (tiled - whole).abs().mean() < 0.3 * (whole - big).abs().mean()  # measured 0.18


@pytest.mark.parametrize("shape", [(1, 3, 20, 24), (3, 3, 33, 35), (1, 3, 7, 1)])
def test_small_and_odd_sizes_are_padded_and_cropped_back(prior, shape):
    odd = torch.rand(shape, generator=seeded())
    purified = purify(prior, odd, 20, generator=seeded())
    assert purified.shape == odd.shape and purified.min() >= 0 and purified.max() <= 1


def test_gradient_flows_to_the_input(prior, image):
    attacked = image.clone().requires_grad_(True)
    purify(prior, attacked, 30, steps=2, generator=seeded()).square().sum().backward()
    assert torch.isfinite(attacked.grad).all() and attacked.grad.abs().sum() > 0
    big = torch.rand(1, 3, 48, 40, generator=seeded()).requires_grad_(True)
    purify(prior, big, 30, sampler="ddpm", generator=seeded()).sum().backward()
    assert torch.isfinite(big.grad).all() and big.grad.abs().sum() > 0


@pytest.mark.parametrize("settings, message", [
    ({"t_star": -1}, "t_star must be an integer timestep in \\[0, 1000\\)"),
    ({"t_star": 1000}, "t_star must be"),
    ({"t_star": 2.5}, "t_star must be"),
    ({"t_star": 30, "steps": 0}, "steps must be an integer from 1 to t_star=30"),
    ({"t_star": 3, "steps": 4}, "steps must be"),
    ({"sampler": "euler"}, "unknown sampler 'euler'"),
    ({"tile": 31}, "tile 31 must be a positive multiple of 2"),
    ({"overlap": 32}, "overlap 32"),
])
def test_invalid_settings_raise_spec_errors(prior, image, settings, message):
    with pytest.raises(SpecError, match=message):
        purify(prior, image, **{"t_star": 30, **settings})


def test_image_shape_is_checked(prior):
    with pytest.raises(SpecError, match="add a batch dimension"):
        purify(prior, torch.rand(3, 32, 32), 30)


def test_defense_parses_its_argument(prior, image):
    defense = PurifyDefense("t=30,steps=4,sampler=ddpm", prior=prior)
    assert isinstance(defense, DefenseComponent) and defense.name == "purify" and defense.randomized
    assert (defense.t_star, defense.steps, defense.sampler) == (30, 4, "ddpm")
    assert torch.equal(defense.transform(image, seeded(2)),
                       purify(prior, image, 30, steps=4, sampler="ddpm", generator=seeded(2)))
    default = PurifyDefense(None, prior=prior)
    assert (default.t_star, default.steps, default.sampler, default.overlap) == (30, 2, "ddim", 16)
    assert PurifyDefense("50").t_star == 50 and PurifyDefense("t_star=12,tile=64,overlap=8").tile == 64
    auto = PurifyDefense("auto", prior=prior)
    assert auto.t_star is None
    with pytest.raises(SpecError, match="resolved by the runner"):
        auto.transform(image, seeded())
    with pytest.raises(SpecError, match="no diffusion prior"):
        PurifyDefense("t=30").transform(image, seeded())


@pytest.mark.parametrize("argument, message", [
    ("t=abc", "must be an integer"), ("strength=3", "key among t, t_star"), ("t=", "key=value"),
    ("t=30,steps=40", "steps must be"), ("sampler=heun", "unknown sampler"), ("tile=16,overlap=16", "overlap 16"),
])
def test_defense_rejects_bad_arguments(argument, message):
    with pytest.raises(SpecError, match=message):
        PurifyDefense(argument)


def test_per_image_t_star_matches_the_batch_call_and_zero_leaves_an_image_alone(prior):
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    per_image = purify(prior, images, torch.tensor([0, 12]), steps=2, generator=torch.Generator().manual_seed(5))
    shared = purify(prior, images, 12, steps=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(per_image[0], images[0])
    assert torch.allclose(per_image[1], shared[1], atol=1e-6)
    with pytest.raises(SpecError, match="one per image"):
        purify(prior, images, torch.tensor([5, 6, 7]))


def test_a_t_star_beyond_the_priors_schedule_is_refused_before_a_run(prior, tmp_path):
    with pytest.raises(SpecError, match=r"t_star must be an integer timestep in \[0, 1000\), got 2000"):
        PurifyDefense("t=2000", prior=prior)
    from typer.testing import CliRunner

    from udcbench.cli import app
    from udcbench.defenses.diffusion import save_prior

    save_prior(prior, tmp_path / "prior.safetensors")
    result = CliRunner().invoke(app, ["run", "--defense", f"purify:t=2000,prior={tmp_path / 'prior.safetensors'}",
                                      "--limit", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "got 2000" in result.output and not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match="tile 31 must be a positive multiple of 2"):
        PurifyDefense("tile=31", prior=prior)


# --- timestep conventions: which ᾱ the sampler uses (index=udcbench, the default, and index=diffpure) -------------

def linear_alphas_cumprod(T=1000):
    """ᾱ of the linear DDPM schedule, computed here independently of Schedule."""
    out, product = [], 1.0
    for i in range(T):
        product *= 1 - (1e-4 + (0.02 - 1e-4) * i / (T - 1))
        out.append(product)
    return out


class RecordingSchedule(Schedule):
    """The default linear schedule; records every ᾱ the sampler asks for (forward diffusion and each step)."""

    def __init__(self):
        super().__init__()
        self.used = []

    def alpha_bar(self, t, like):
        value = super().alpha_bar(t, like)
        self.used.append(value.reshape(-1)[0].item())
        return value


def trace(t_star, steps, index=None, sampler="ddim"):
    """Run purify on a recording prior: (x it diffused to, the ε̂ timesteps, ᾱ per forward/step, reproduced noise)."""
    schedule = RecordingSchedule()
    clean = torch.rand(1, 3, 8, 8, generator=seeded(7))
    oracle = DiffusionPrior(Oracle(clean, Schedule()), schedule, size=8)  # only purify's ᾱ lookups are recorded
    settings = {} if index is None else {"index": index}
    purified = purify(oracle, clean, t_star, steps, sampler, seeded(0), overlap=0, **settings)
    noise = torch.randn(clean.shape, generator=seeded(0))  # purify's first draw: the forward noise
    assert torch.allclose(purified, clean, atol=1e-4)
    return clean * 2 - 1, oracle.unet.seen, schedule.used, noise


def test_the_default_visits_30_then_15_then_jumps_to_alpha_bar_one():
    """t* = 30, 2 steps: diffuse with ᾱ[30] (0-based), ε̂ at 30 → ᾱ[15], ε̂ at 15 → ᾱ = 1 (index 0 is skipped)."""
    a = linear_alphas_cumprod()
    x0, seen, used, noise = trace(30, 2)
    assert [t for t, _ in seen] == [30, 15]
    first = seen[0][1]
    assert torch.allclose(first, math.sqrt(a[30]) * x0 + math.sqrt(1 - a[30]) * noise, atol=1e-5)
    assert not torch.allclose(first, math.sqrt(a[29]) * x0 + math.sqrt(1 - a[29]) * noise, atol=1e-5)
    # q_sample, then (ᾱ_t, ᾱ_s) for each step
    assert used == pytest.approx([a[30], a[30], a[15], a[15], 1.0], rel=1e-6)
    assert visited_timesteps(30, 2) == visited_timesteps(30, 2, "udcbench") == [30, 15, -1]
    assert reverse_timesteps(30, 2) == [30, 15]


def test_the_diffpure_index_diffuses_with_alpha_bar_t_minus_1_and_visits_t_minus_1_to_0():
    """DiffPure's code: x = x0·sqrt(a[t−1]) + e·sqrt(1 − a[t−1]), then p_sample at t−1, …, 0, and 0 → ᾱ = 1."""
    a = linear_alphas_cumprod()
    x0, seen, used, noise = trace(6, 6, "diffpure")
    assert [t for t, _ in seen] == [5, 4, 3, 2, 1, 0]
    assert torch.allclose(seen[0][1], math.sqrt(a[5]) * x0 + math.sqrt(1 - a[5]) * noise, atol=1e-5)
    assert used == pytest.approx([a[5], a[5], a[4], a[4], a[3], a[3], a[2], a[2], a[1], a[1], a[0], a[0], 1.0],
                                 rel=1e-6)
    assert visited_timesteps(6, 6, "diffpure") == [5, 4, 3, 2, 1, 0, -1]
    # fewer steps: the udcbench grid one index lower (⌊t*·k/steps⌋ − 1), still ending at ᾱ = 1
    x0, seen, used, noise = trace(30, 2, "diffpure")
    assert [t for t, _ in seen] == [29, 14] == reverse_timesteps(30, 2, "diffpure")
    assert used == pytest.approx([a[29], a[29], a[14], a[14], 1.0], rel=1e-6)


@pytest.mark.parametrize("t_star, steps, index, sampler", [
    (30, 2, "udcbench", "ddim"), (30, 2, "diffpure", "ddpm"), (200, 3, "udcbench", "ddpm"),
    (7, 3, "diffpure", "ddim"), (1000, 4, "diffpure", "ddim"), (999, 1, "udcbench", "ddim"),
    (1, 1, "diffpure", "ddpm"), (10, 10, "udcbench", "ddim"),
])
def test_the_sampler_runs_exactly_visited_timesteps(t_star, steps, index, sampler):
    a = linear_alphas_cumprod() + [1.0]  # a[−1]: ᾱ = 1, the clean image
    visited = visited_timesteps(t_star, steps, index)
    x0, seen, used, noise = trace(t_star, steps, index, sampler)
    assert len(visited) == steps + 1 and visited[-1] == -1
    assert [t for t, _ in seen] == visited[:-1]
    assert torch.allclose(seen[0][1], math.sqrt(a[visited[0]]) * x0 + math.sqrt(1 - a[visited[0]]) * noise,
                          atol=1e-5)
    expected = [a[visited[0]]] + [a[v] for t, s in zip(visited, visited[1:]) for v in (t, s)]
    assert used == pytest.approx(expected, rel=1e-6)


def test_diffpure_ddpm_with_every_step_is_the_guided_diffusion_chain():
    """index=diffpure, sampler=ddpm, steps = t*: DiffPure's guided-diffusion loop written out (fixed-small
    variance, x̂0 clipped, no noise at t = 0), with the same noise draws — equal to float precision."""
    schedule, t_star = Schedule(), 8
    local = DiffusionPrior(Local(), schedule, size=16)
    images = torch.rand(2, 3, 16, 16, generator=seeded(9))
    with torch.no_grad():
        ours = purify(local, images, t_star, t_star, "ddpm", seeded(3), overlap=0, index="diffpure")

    betas, a = schedule.betas, schedule.alphas_cumprod
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    generator = seeded(3)
    x0 = images.double() * 2 - 1
    x = x0 * a[t_star - 1].sqrt() + torch.randn(images.shape, generator=generator).double() * (1 - a[t_star - 1]).sqrt()
    for i in reversed(range(t_star)):
        with torch.no_grad():
            epsilon = local.predict_noise(x.float(), i).double()
        pred = ((x - (1 - a[i]).sqrt() * epsilon) / a[i].sqrt()).clamp(-1, 1)
        mean = (betas[i] * a_prev[i].sqrt() * pred + (1 - a_prev[i]) * (1 - betas[i]).sqrt() * x) / (1 - a[i])
        if i > 0:
            variance = betas[i] * (1 - a_prev[i]) / (1 - a[i])
            mean = mean + variance.sqrt() * torch.randn(images.shape, generator=generator).double()
        x = mean
    reference = ((x.clamp(-1, 1) + 1) / 2).float()
    assert (ours - reference).abs().max() < 1e-4  # float32 against float64; index=udcbench is 8e-3 off


def test_diffpure_strided_steps_match_diffusers_trailing_img2img_timesteps():
    """The strided diffpure analogue is what diffusers' img2img visits with "trailing" spacing (t* = strength·T),
    and with n = T inference steps every spacing gives DiffPure's chain."""
    diffusers = pytest.importorskip("diffusers")

    def img2img_timesteps(spacing, n, strength):
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        scheduler.set_timesteps(n)
        kept = min(int(n * strength), n)
        return scheduler.timesteps[n - kept:].tolist(), float(scheduler.final_alpha_cumprod)

    assert img2img_timesteps("trailing", 100, 0.3) == (reverse_timesteps(300, 30, "diffpure"), 1.0)
    assert img2img_timesteps("trailing", 50, 0.2) == (reverse_timesteps(200, 10, "diffpure"), 1.0)
    for spacing in ("leading", "trailing", "linspace"):
        assert img2img_timesteps(spacing, 1000, 0.03) == (reverse_timesteps(30, 30, "diffpure"), 1.0)


def test_per_image_t_star_with_the_diffpure_index(prior):
    images = torch.rand(2, 3, 40, 40, generator=seeded(3))
    attacked = images.clone().requires_grad_(True)
    per_image = purify(prior, attacked, torch.tensor([0, 12]), 2, "ddpm", seeded(5), index="diffpure")
    shared = purify(prior, images, 12, 2, "ddpm", seeded(5), index="diffpure")
    assert torch.equal(per_image[0], images[0]) and torch.allclose(per_image[1], shared[1], atol=1e-6)
    per_image.sum().backward()
    assert torch.isfinite(attacked.grad).all()
    assert not torch.allclose(shared, purify(prior, images, 12, 2, "ddpm", seeded(5)))


def test_t_star_ranges_per_index(prior, image):
    """diffpure counts noise levels 1 … T (index t* − 1), so t* = T is allowed there and not by default."""
    assert purify(prior, image, 1000, 1, index="diffpure", generator=seeded()).shape == image.shape
    assert PurifyDefense("t=1000,index=diffpure", prior=prior).t_star == 1000
    with pytest.raises(SpecError, match=r"timestep in \[0, 1000\), got 1000"):
        PurifyDefense("t=1000", prior=prior)
    with pytest.raises(SpecError, match=r"timestep in \[0, 1000\], got 1001"):
        PurifyDefense("t=1001,index=diffpure", prior=prior)
    assert visited_timesteps(0, 2) == visited_timesteps(0, 2, "diffpure") == []
    assert purify(prior, image, 0, index="diffpure") is image


@pytest.mark.parametrize("call", [
    lambda prior, image: PurifyDefense("t=30,index=DiffPure", prior=prior),
    lambda prior, image: PurifyDefense("index=t-1"),
    lambda prior, image: PurifyDefense(index="sdedit"),
    lambda prior, image: purify(prior, image, 30, index="diffusers"),
    lambda prior, image: visited_timesteps(30, 2, "leading"),
])
def test_an_unknown_index_is_one_spec_error(prior, image, call):
    with pytest.raises(SpecError, match=r"unknown index '.+'( \(did you mean 'diffpure'\?\))?; use udcbench .* or "
                                        r"diffpure .*index=diffpure") as error:
        call(prior, image)
    assert "\n" not in str(error.value)


def test_the_default_record_is_unchanged_and_the_index_is_recorded_only_when_set(prior, image):
    """api.prepare hashes the spec string and these records: a default purify keeps the keys (and so the run
    hash) of earlier versions; index=diffpure is another run."""
    default = PurifyDefense("t=30", prior=prior).record("uformer-nano")
    assert set(default) == {"t_star", "steps", "sampler", "tile", "overlap", "prior"}
    assert {k: v for k, v in default.items() if k != "prior"} == {"t_star": 30, "steps": 2, "sampler": "ddim",
                                                                  "tile": 32, "overlap": 16}
    assert PurifyDefense("t=30,index=udcbench", prior=prior).record("uformer-nano") == default
    diffpure = PurifyDefense("t=30,index=diffpure", prior=prior)
    assert diffpure.index == "diffpure" and diffpure.record("uformer-nano") == {**default, "index": "diffpure"}
    assert torch.equal(diffpure.transform(image, seeded(2)), purify(prior, image, 30, 2, "ddim", seeded(2),
                                                                     index="diffpure"))
    assert torch.equal(PurifyDefense("t=30", prior=prior).transform(image, seeded(2)),
                       purify(prior, image, 30, 2, "ddim", seeded(2), index="udcbench"))
