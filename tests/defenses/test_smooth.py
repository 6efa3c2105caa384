"""The `smooth` defense: median smoothing of the whole system, its certificates in runs, σ selection, errors."""

import json

import pytest
import torch

import udcbench
from udcbench import AttackSpec, DataSpec, ModelSpec, RunSpec
from udcbench.api import prepare
from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.adaptive import eot
from udcbench.defenses import defense_label, make_defense
from udcbench.defenses.certify import bounds, certified_psnr
from udcbench.defenses.sigma_selection import CANDIDATES
from udcbench.errors import SpecError
from udcbench.metrics import psnr
from udcbench.metrics.base import certified_prefix
from udcbench.spec import DefenseSpec


def smoothed(defense, model, image, seed):
    return defense.restore(model, image, torch.Generator().manual_seed(seed), keep=True)


@pytest.mark.parametrize("radius", [0.1, 0.3])
def test_certificates_hold_against_an_adaptive_l2_attack_of_that_radius(tiny_model, images, radius):
    """PGD-L2 with ‖δ‖₂ ≤ r, differentiating through the smoothing with EOT over its noise and aimed at the
    smoothed clean output, never brings the smoothed output's PSNR below the certified bound."""
    degraded, gt = images
    defense = make_defense("smooth:sigma=0.5,n=200,attack_n=8")
    clean, samples = smoothed(defense, tiny_model, degraded, 0)
    lower, upper = bounds(samples, 0.5, radius, 0.001)
    draws = torch.Generator().manual_seed(1)
    attack = eot(make_attack("pgd-l2", eps=radius, steps=10), 2)
    objective = make_objective("mse-clean")

    def target(image):
        return defense.restore(tiny_model, image, draws, differentiable=True)

    adversarial = attack(target, degraded, objective, clean, torch.Generator().manual_seed(2)).detach()
    assert ((adversarial - degraded).flatten(1).norm(dim=1) <= radius + 1e-5).all()
    with torch.no_grad():
        attacked = defense.restore(tiny_model, adversarial, torch.Generator().manual_seed(3))
    assert (psnr(attacked, gt) >= certified_psnr(lower, upper, gt)).all()
    assert (psnr(attacked, clean) >= certified_psnr(lower, upper, clean)).all()
    assert bool(((attacked >= lower) & (attacked <= upper)).all())  # pixel by pixel, as certified
    assert (psnr(attacked, clean) < 60).all()  # the attack did move the output


def test_smoothing_is_seeded_and_chunking_never_changes_a_value(tiny_model, images):
    degraded, _ = images
    first, samples = smoothed(make_defense("smooth:sigma=0.25,n=20,batch=16"), tiny_model, degraded, 5)
    again, _ = smoothed(make_defense("smooth:sigma=0.25,n=20,batch=16"), tiny_model, degraded, 5)
    chunked, _ = smoothed(make_defense("smooth:sigma=0.25,n=20,batch=3"), tiny_model, degraded, 5)
    assert torch.equal(first, again) and torch.allclose(first, chunked, atol=1e-6)
    assert samples.shape == (20, *degraded.shape) and torch.equal(first, samples[9])
    other, _ = smoothed(make_defense("smooth:sigma=0.25,n=20"), tiny_model, degraded, 6)
    assert not torch.equal(first, other)


def test_smoothing_wraps_the_whole_system(tiny_model, images):
    """blur+smooth: the noise is added to the raw input, then blurred, then restored."""
    degraded, _ = images
    defense = make_defense("blur:1.0+smooth:sigma=0.1,n=5")
    generator = torch.Generator().manual_seed(0)
    out = defense.restore(tiny_model, degraded, generator)
    generator = torch.Generator().manual_seed(0)
    blur = make_defense("blur:1.0")
    copies = [tiny_model(blur.transform((degraded + 0.1 * torch.randn(degraded.shape, generator=generator)).clamp(0, 1),
                                        generator)).clamp(0, 1) for _ in range(5)]
    assert torch.allclose(out, torch.stack(copies).median(dim=0).values, atol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("smooth:sigma=0", "sigma='0' must be a noise level > 0"),
    ("smooth:sigma=-0.5", "must be a noise level > 0"),
    ("smooth:n=0", "n='0' must be an integer ≥ 1"),
    ("smooth:alpha=1", "alpha='1' must be a probability in"),
    ("smooth:sigma=auto", "add radius="),
    ("smooth:loss=2", "add sigma=auto"),
    ("smooth:prior=x.safetensors", "add denoise=prior"),
    ("smooth+blur:1", "one smooth component, last"),
    ("smooth+smooth", "one smooth component, last"),
    ("smooth:denoise=maybe", "none or prior"),
])
def test_bad_smooth_settings_are_one_clear_error(spec, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        make_defense(spec)


def run_spec(defense, radius=(), threat="gray-box", model="nafnet-nano", limit=1, steps=2, eps=0.25):
    return RunSpec(model=ModelSpec(model), defense=DefenseSpec(defense), data=DataSpec(limit=limit),
                   attack=AttackSpec.of("pgd-l2", eps=eps, steps=steps), threat=threat, radius=tuple(radius))


def test_a_run_scores_certified_columns_that_hold_adaptively(tmp_path):
    rows = udcbench.run(run_spec("smooth:sigma=0.5,n=64", (0.1, 0.25), "adaptive"), out=tmp_path)
    for radius in (0.1, 0.25):
        prefix = certified_prefix(radius)
        assert (rows["psnr_adv_gt"] >= rows[f"{prefix}_cert_gt"]).all()
        assert (rows["psnr_adv_clean"] >= rows[f"{prefix}_cert_clean"]).all()
    assert (rows[f"{certified_prefix(0.1)}_cert_gt"] >= rows[f"{certified_prefix(0.25)}_cert_gt"]).all()
    (record,) = json.loads(rows["defense_params"].iloc[0])
    assert record == {"component": "smooth", "sigma": 0.5, "n": 64, "alpha": 0.001, "batch": 16, "attack_n": 8,
                      "denoise": "none"}
    assert rows["eot"].tolist() == [2]
    again = udcbench.run(run_spec("smooth:sigma=0.5,n=64", (0.1, 0.25), "adaptive"))
    assert again.filter(like="cpsnr").equals(rows.filter(like="cpsnr"))  # seeded: the same numbers


def test_the_radius_is_part_of_the_run_and_needs_a_smoothing_defense():
    plain = prepare(run_spec("smooth:sigma=0.5,n=64"))
    certified = prepare(run_spec("smooth:sigma=0.5,n=64", (0.25,)))
    assert plain.run_hash != certified.run_hash and certified.radii == (0.25,) and plain.radii == ()
    with pytest.raises(SpecError, match="--radius certifies a smoothed defense"):
        prepare(run_spec("blur:1.0", (0.25,)))
    with pytest.raises(SpecError, match=r"smooth n=20 samples cannot certify 128×128 images .* n ≥ 27"):
        prepare(run_spec("smooth:n=20", (0.25,)))
    warned = prepare(run_spec("smooth:sigma=0.25,n=64", (0.25,)))
    assert any("radius 0.25 needs n ≥ 107" in warning for warning in warned.warnings)


def test_sigma_auto_follows_its_criterion_and_records_every_candidate():
    job = prepare(run_spec("smooth:sigma=auto,radius=0.1,n=64,images=1,loss=40"))
    smoother = job.defense.smoother
    chosen = smoother.chosen
    # σ 0.06 and 0.12 need more than 64 samples to certify r = 0.1 on 128² images: not evaluated
    assert [row["sigma"] for row in chosen["candidates"]] == [0.25, 0.5, 1.0] and chosen["met"]
    assert chosen["not_certifiable_with_n"] == [0.06, 0.12] and list(CANDIDATES) == [0.06, 0.12, 0.25, 0.5, 1.0]
    meeting = [row for row in chosen["candidates"] if row["clean_loss_db"] <= 40]
    best = max(row["certified_psnr"] for row in meeting)
    assert smoother.sigma == next(row["sigma"] for row in meeting if row["certified_psnr"] >= best - 0.01)
    assert job.radii == (0.1,)  # certified at the radius it was tuned for
    (record,) = json.loads(job.labels["defense_params"])
    assert record["sigma"] == smoother.sigma and record["radius"] == 0.1 and record["auto"]["candidates"]
    strict = prepare(run_spec("smooth:sigma=auto,radius=0.1,n=64,images=1,loss=0"))
    assert not strict.defense.smoother.chosen["met"]  # nothing keeps clean PSNR: the smallest loss is used
    losses = {row["sigma"]: row["clean_loss_db"] for row in strict.defense.smoother.chosen["candidates"]}
    assert strict.defense.smoother.sigma == min(losses, key=losses.get)
    assert defense_label(job.defense.spec, job.labels["defense_params"]).endswith(f"(σ={smoother.sigma:g})")


def test_denoised_smoothing_steps_once_from_the_matching_timestep(prior_file, tiny_model, images):
    defense = make_defense(f"smooth:sigma=0.25,n=4,denoise=prior,prior={prior_file}")
    smoother = defense.smoother
    bars = smoother.prior.schedule.alphas_cumprod
    t = smoother.timestep()
    level = ((1 - bars) / bars).sqrt()
    assert abs(level[t] - 0.5) == (level - 0.5).abs().min()
    degraded, _ = images
    out = defense.restore(tiny_model, degraded, torch.Generator().manual_seed(0))
    assert out.shape == degraded.shape and 0 <= out.min() and out.max() <= 1
    record = smoother.record("tiny")
    assert record["denoise"] == "prior" and record["t"] == t and len(record["prior"]) == 16


def test_sigma_auto_refuses_a_radius_no_candidate_can_certify_with_n():
    with pytest.raises(SpecError, match=r"no σ in .* certifies radius 2 \(σ=1 needs n ≥ [\d,]+\); raise n"):
        prepare(run_spec("smooth:sigma=auto,radius=2,n=64,images=1"))


@pytest.mark.parametrize("args, message", [
    (["--defense", "smooth:sigma=0"], "smooth sigma='0' must be a noise level > 0"),
    (["--defense", "smooth:sigma=-1"], "must be a noise level > 0"),
    (["--defense", "smooth:n=20", "--radius", "0.25"], "smooth n=20 samples cannot certify 128×128 images"),
    (["--defense", "none", "--radius", "0.25"], "--radius certifies smoothed defenses"),
    (["--defense", "blur:1", "--radius", "0.25"], "--radius certifies smoothed defenses"),
    (["--defense", "smooth", "--radius", "abc"], "radius takes L2 radii ≥ 0, got 'abc'"),
    (["--defense", "smooth", "--radius", "-0.1"], "radius takes L2 radii ≥ 0"),
    (["--defense", "smooth:sigma=auto"], "add radius="),
])
def test_bad_smoothing_input_is_one_clear_line_and_writes_nothing(tmp_path, args, message):
    from typer.testing import CliRunner

    from udcbench.cli import app

    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["run", *args, "--limit", "1", "--steps", "1", "--out", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0], lines[0]
    assert not out.exists()


def test_a_smoothed_distilled_surrogate_stands_in_for_the_model(tiny_model, images):
    """DUCD's deployable defense: smooth:surrogate= swaps in the distilled surrogate and smooths it; the
    certificate is the smoothed surrogate's. A file of another kind is refused in one line."""
    from udcbench.models import WEIGHTS_DIR
    from udcbench.models.distill import SURROGATE_FILE

    defense = make_defense("smooth:sigma=0.5,n=27,surrogate=bundled")
    swapped = defense.prepare_model(tiny_model)
    assert swapped is defense.smoother.surrogate and swapped.info.extra["surrogate"]["target"] == "uformer-nano"
    record = defense.record("tiny")[0]
    assert record["surrogate"].startswith("file:") and record["surrogate_of"] == "uformer-nano"
    degraded, _ = images
    out = defense.restore(swapped, degraded, torch.Generator().manual_seed(0))
    assert out.shape == degraded.shape
    same = make_defense(f"smooth:sigma=0.5,n=27,surrogate={WEIGHTS_DIR / SURROGATE_FILE}")
    assert same.record("tiny")[0]["surrogate"] == record["surrogate"]
    with pytest.raises(SpecError, match="not a distilled surrogate"):
        make_defense(f"smooth:surrogate={WEIGHTS_DIR / 'uformer-nano.safetensors'}")
