"""Guided purification (guide=mse / guide=adv), per-step gradient checkpointing, learned-σ DDPM steps, ADM priors
through purify:prior=…,config=…, and the refusals of bad settings and files."""

import pytest
import torch
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.defenses import guide as guide_module
from udcbench.defenses.adm import ADMUNet, parse_adm_config
from udcbench.defenses.adm_checkpoint import save_adm_state_dict
from udcbench.defenses.base import make_defense
from udcbench.defenses.diffusion import DiffusionPrior, PriorUNet, Schedule
from udcbench.defenses.guide import GuideNet, load_guide, make_guide, save_guide, train_guide
from udcbench.defenses.purify import PurifyDefense, _reverse_step, purify
from udcbench.errors import CheckpointError, SpecError
from tests.prior_helpers import save_tiny_prior

ADM_FLAGS = ("image_size=32,num_channels=32,num_res_blocks=1,channel_mult=1,2,attention_resolutions=32,16,"
             "num_head_channels=16,learn_sigma=true,resblock_updown=true,use_scale_shift_norm=true")


def frozen(module):
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return frozen(DiffusionPrior(PriorUNet(base=8, mults=(1, 2)), size=32))


@pytest.fixture(scope="module")
def guide_net():
    torch.manual_seed(1)
    return frozen(GuideNet(channels=8, latent=8, groups=4))


def seeded(seed=1):
    return torch.Generator().manual_seed(seed)


def images(seed=2, size=40):
    return torch.rand(2, 3, size, size, generator=seeded(seed))


# --- guidance ----------------------------------------------------------------------------------------------

def test_guidance_vanishes_at_the_first_step_and_at_scale_zero(prior, guide_net):
    x = images()
    plain = purify(prior, x, 30, 1, generator=seeded())
    for guide in (make_guide("mse", 0.7), make_guide("adv", 0.7, guide_net)):  # y_t* = x_t*: D and ∇D are 0
        assert torch.allclose(purify(prior, x, 30, 1, generator=seeded(), guide=guide), plain, atol=1e-6)
    plain = purify(prior, x, 30, 3, generator=seeded())
    for guide in (make_guide("mse", 0.0), make_guide("adv", 0.0, guide_net)):
        assert torch.equal(purify(prior, x, 30, 3, generator=seeded(), guide=guide), plain)


def test_mse_guidance_pulls_the_estimate_toward_the_input(prior):
    x = images(size=32)
    distances = [(purify(prior, x, 200, 4, generator=seeded(), guide=make_guide("mse", s) if s else None) - x)
                 .square().mean().item() for s in (0.0, 0.3, 0.6)]
    assert distances[0] > distances[1] > distances[2]


def test_mse_guidance_is_the_epsilon_shift_of_its_formula():
    """One DDIM step with a zero-ε prior: x̂₀ = (x_t − s·(x_t − y_t))/√ᾱ_t exactly (ε̂' = s·∇D/√(1 − ᾱ_t))."""
    class Zero(torch.nn.Module):
        multiple = 1

        def forward(self, x, t):
            return torch.zeros_like(x)

    zero = DiffusionPrior(Zero(), size=8)
    x, start, noise = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1, torch.randn(1, 3, 8, 8)
    out = _reverse_step(zero, 30, -1, False, 8, 0, make_guide("mse", 0.4), x, start, noise, None)
    alpha = zero.schedule.alphas_cumprod[30].float()
    target = alpha.sqrt() * start + (1 - alpha).sqrt() * noise
    assert torch.allclose(out, ((x - 0.4 * (x - target)) / alpha.sqrt()).clamp(-1, 1), atol=1e-6)


def test_learned_sigma_sets_the_ancestral_variance():
    class Stub(torch.nn.Module):
        multiple = 1

        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, x, t):
            return torch.cat([torch.zeros_like(x), torch.full_like(x, self.v)], dim=1)

    x, start, noise, fresh = (torch.randn(1, 3, 8, 8) for _ in range(4))
    steps = {v: _reverse_step(DiffusionPrior(Stub(v), size=8, learned_sigma=True), 30, 15, True, 8, 0, None, x, start,
                              noise, fresh) for v in (1.0, -1.0)}
    schedule = Schedule()
    a_t, a_s = schedule.alphas_cumprod[30], schedule.alphas_cumprod[15]
    beta = 1 - a_t / a_s
    posterior = (1 - a_s) / (1 - a_t) * beta
    assert torch.allclose(steps[1.0] - steps[-1.0], float(beta.sqrt() - posterior.sqrt()) * fresh, atol=1e-6)


# --- gradients ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, sampler", [(None, "ddim"), ("mse", "ddpm"), ("adv", "ddim"), ("adv", "ddpm")])
def test_checkpointing_changes_neither_values_nor_gradients(prior, guide_net, kind, sampler):
    guide = make_guide(kind, 0.3, guide_net)
    results = []
    for checkpoint in (False, True):
        x = images().requires_grad_()
        out = purify(prior, x, 30, 5, sampler, seeded(), guide=guide, checkpoint=checkpoint)
        out.square().sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_adaptive_gradients_run_through_the_adversarial_guidance(prior, guide_net, monkeypatch):
    """The gradient w.r.t. the input matches a finite difference (float64), and differs from the one obtained when
    the guidance gradient is detached: adaptive attacks differentiate through the guidance term too."""
    class Smooth(torch.nn.Module):  # a float64-capable stand-in for the prior's network: smooth in x
        multiple = 1

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, t):
            return torch.tanh(self.conv(x)) * (1 + t.to(x.dtype)[:, None, None, None] / 1000)

    torch.manual_seed(4)
    prior64, net64 = frozen(DiffusionPrior(Smooth(), size=32).double()), guide_net.double()
    guide = make_guide("adv", 0.8, net64)
    x, direction = images(size=16).double(), torch.randn(2, 3, 16, 16, generator=seeded(7), dtype=torch.float64)

    def loss(image):
        return purify(prior64, image, 100, 3, generator=seeded(), guide=guide, checkpoint=True).square().sum()

    point = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(point), point)
    h = 1e-6
    numeric = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
    assert abs(float((grad * direction).sum()) - float(numeric)) < 1e-5 * max(1.0, abs(float(numeric)))
    original = guide_module.AdversarialGuide.gradient
    monkeypatch.setattr(guide_module.AdversarialGuide, "gradient",
                        lambda self, a, b: original(self, a.detach(), b.detach()))
    point = x.clone().requires_grad_()
    (detached,) = torch.autograd.grad(loss(point), point)
    assert (detached - grad).abs().max() > 1e-4
    guide_net.float()


# --- ADM priors and the defense spec ------------------------------------------------------------------------

def test_an_adm_checkpoint_purifies_through_the_defense_spec(tmp_path):
    torch.manual_seed(0)
    net = ADMUNet(parse_adm_config("adm:" + ADM_FLAGS.replace("1,2", "1/2").replace("32,16", "32/16")
                                   .replace(",", ";")))
    path = tmp_path / "adm.pt"
    save_adm_state_dict(net, path)
    defense = make_defense(f"purify:t=20,prior={path},config=adm:{ADM_FLAGS},sampler=ddpm")
    purifier = defense.components[0]
    assert purifier.prior.learned_sigma and purifier.prior.size == 32 and purifier.t_star == 20
    assert purifier.sampler == "ddpm"
    out = purifier.transform(images(size=48), seeded())
    assert out.shape == (2, 3, 48, 48) and out.min() >= 0 and out.max() <= 1
    again = purifier.transform(images(size=48), seeded())
    assert torch.equal(out, again)
    record = purifier.record("m")
    assert record["prior"] and "guide" not in record


def test_precision_fp16_runs_an_adm_prior_in_half_precision(tmp_path):
    torch.manual_seed(0)
    net = ADMUNet(parse_adm_config("adm:" + ADM_FLAGS.replace("1,2", "1/2").replace("32,16", "32/16")
                                   .replace(",", ";")))
    save_adm_state_dict(net, tmp_path / "adm.pt")
    outputs = {}
    for precision in ("auto", "fp16"):  # auto on the CPU: float32
        purifier = PurifyDefense(f"t=20,prior={tmp_path / 'adm.pt'},config=adm:{ADM_FLAGS},precision={precision}")
        purifier.ready(None, None, 0, torch.device("cpu"), None)
        outputs[precision] = purifier.transform(images(size=32), seeded())
        kind = purifier.prior.unet.input_blocks[1][0].in_layers[2].weight.dtype
        assert kind == (torch.float16 if precision == "fp16" else torch.float32)
    assert 0 < (outputs["auto"] - outputs["fp16"]).abs().max() < 0.05


def test_guided_settings_are_recorded(tmp_path, guide_net):
    path = tmp_path / "g.safetensors"
    save_guide(guide_net, path, meta={"seed": "1"})
    prior_path = save_tiny_prior(tmp_path / "p.safetensors")
    mse = PurifyDefense(f"prior={prior_path},guide=mse,scale=0.25").record("m")
    assert (mse["guide"], mse["scale"]) == ("mse", 0.25) and "guide_weights" not in mse
    adv = PurifyDefense(f"prior={prior_path},guide=adv:{path}").record("m")
    assert adv["guide"] == "adv" and adv["scale"] == guide_module.DEFAULT_SCALE["adv"]
    assert len(adv["guide_weights"]) == 16
    bundled = make_defense("purify:guide=adv").components[0]
    assert bundled.guide.net.meta["data"] == "udc-mini" and "train-guide" in bundled.guide.net.meta["command"]


@pytest.mark.parametrize("argument, error, pattern", [
    ("guide=mse,scale=-1", SpecError, r"scale='-1' must be a guidance scale ≥ 0"),
    ("scale=0.2", SpecError, "add guide=mse or guide=adv"),
    ("guide=pixels", SpecError, "must be mse, adv or adv:FILE"),
    ("config=adm-256-uncond", SpecError, "add prior=FILE.pt"),
    ("checkpoint=maybe", SpecError, "auto, on or off"),
    ("precision=fp16", SpecError, "no half-precision mode"),
])
def test_bad_guided_settings_are_refused(argument, error, pattern):
    with pytest.raises(error, match=pattern):
        make_defense(f"purify:{argument}")


def test_wrong_files_are_refused(tmp_path):
    prior_path = save_tiny_prior(tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match="not a udcbench guide network.*udcbench-diffusion-prior/1.*train-guide"):
        make_defense(f"purify:guide=adv:{prior_path}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="not a udcbench guide .*safetensors"):
        load_guide(tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="not a guided-diffusion \\(ADM\\) UNet state dict"):
        torch.save(PriorUNet(base=8, mults=(1, 2)).state_dict(), tmp_path / "prior.pt")
        make_defense(f"purify:prior={tmp_path / 'prior.pt'},config=adm-256-uncond")
    with pytest.raises(SpecError, match="unknown ADM config 'adm-512'"):
        make_defense(f"purify:prior={tmp_path / 'prior.pt'},config=adm-512")


def test_cli_refuses_before_writing(tmp_path):
    out = tmp_path / "never"
    other = tmp_path / "other.pt"
    torch.save(PriorUNet(base=8, mults=(1, 2)).state_dict(), other)
    prior_path = save_tiny_prior(tmp_path / "p.safetensors")
    for spec, message in (("purify:guide=mse,scale=-1", "scale"),
                          ("purify:guide=adv:/no/such.safetensors", "does not exist"),
                          (f"purify:guide=adv:{prior_path}", "not a udcbench guide network"),
                          (f"purify:prior={other},config=adm-256-uncond", "not a guided-diffusion (ADM) UNet"),
                          (f"purify:prior={other},config=adm-999", "unknown ADM config 'adm-999'")):
        result = CliRunner().invoke(app, ["run", "--defense", spec, "--limit", "1", "--out", str(out)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
        assert not out.exists()


# --- training ----------------------------------------------------------------------------------------------

def test_train_guide_is_reproducible_and_its_cli_writes_a_loadable_file(tmp_path):
    data = [torch.rand(3, 40, 40, generator=seeded(i)) for i in range(2)]
    first, second = (train_guide(data, steps=2, batch_size=2, crop=32, seed=3) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    out = tmp_path / "g.safetensors"
    args = ["train-guide", "--steps", "1", "--batch-size", "2", "--crop", "32", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    net = load_guide(out)
    assert net.meta["steps"] == "1" and net.meta["data"] == "udc-mini" and net.meta["seed"] == "0" and "command" in net.meta
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output
    with pytest.raises(SpecError, match="crop 30 must be a multiple of 4"):
        train_guide(data, steps=1, crop=30)


# --- threat models -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["purify:guide=mse", "purify:guide=adv"])
def test_the_adaptive_attack_through_guided_purification_is_at_least_as_damaging(spec):
    """On the attack's own objective (distance from the clean output) the adaptive attack, which differentiates
    through the guided chain, beats the gray-box one on every image."""
    from udcbench import api
    from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

    common = dict(model=ModelSpec("uformer"), attack=AttackSpec.of("pgd", eps="8/255", steps=5),
                  data=DataSpec(limit=2), defense=DefenseSpec(spec))
    gray = api.run(RunSpec(**common)).set_index("image")
    adaptive = api.run(RunSpec(**common, threat="adaptive", eot=1)).set_index("image")
    assert (adaptive["psnr_adv_clean"] <= gray["psnr_adv_clean"]).all()
    assert adaptive["defense_params"].str.contains('"guide"').all()
