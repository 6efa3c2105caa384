"""Fine-tuning on purified inputs (`udcbench finetune`) and the `ft` defense that swaps the weights in."""

import pytest
import torch
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.data import load_dataset
from udcbench.defenses import make_defense
from udcbench.defenses.finetune import FinetuneConfig, defended_inputs, finetune, make_loss
from udcbench.errors import SpecError
from udcbench.models import load_model
from udcbench.models.train import TrainConfig, _random_batch


def purified_loss(model, config, defense, seed=123):
    """The fine-tuning loss on a fixed held-out batch of purified crops (same crops, t* and noise every call)."""
    samples = list(load_dataset(config.data, split="train"))
    generator = torch.Generator().manual_seed(seed)
    crops = TrainConfig(model=config.model, batch_size=6, crop=config.crop)
    inputs, targets, _ = _random_batch(samples, crops, generator)
    with torch.no_grad():
        inputs = defended_inputs(defense, inputs, config, generator)
        loss_fn, _ = make_loss(None)
        return loss_fn(model(inputs), targets).item()


def test_finetuning_lowers_the_loss_on_purified_inputs(tmp_path, prior_file):
    config = FinetuneConfig(model="nafnet-nano", defense=f"purify:prior={prior_file}", steps=20, batch_size=4,
                            crop=32, lr=1e-3, t_min=20, t_max=60, ema=0.5)
    defense = make_defense(config.defense)
    before = purified_loss(load_model("nafnet-nano"), config, defense)
    meta = finetune(config, tmp_path / "ft.safetensors")
    after = purified_loss(load_model("nafnet-nano", weights=tmp_path / "ft.safetensors"), config, defense)
    assert after < 0.97 * before, (before, after)
    assert meta["loss"] == "L1 + 0.2·(1 − SSIM)" and meta["finetuned_from"].startswith("bundled")
    # seeded: the same run writes the same weights
    finetune(config, tmp_path / "again.safetensors")
    first = load_model("nafnet-nano", weights=tmp_path / "ft.safetensors").net.state_dict()
    second = load_model("nafnet-nano", weights=tmp_path / "again.safetensors").net.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_adversarial_finetuning_runs_pgd_on_the_fly(tmp_path, prior_file):
    config = FinetuneConfig(model="nafnet-nano", defense=f"purify:prior={prior_file}", steps=2, batch_size=2,
                            crop=32, adv="pgd", adv_steps=2)
    meta = finetune(config, tmp_path / "adv.safetensors")
    assert meta["adv"] == "pgd" and (tmp_path / "adv.safetensors").is_file()


def test_ft_swaps_in_the_weights_and_records_their_digest(tmp_path, prior_file):
    config = FinetuneConfig(model="nafnet-nano", defense=f"purify:prior={prior_file}", steps=1, batch_size=1, crop=32)
    finetune(config, tmp_path / "ft.safetensors")
    defense = make_defense(f"purify:t=10,prior={prior_file}+ft:{tmp_path / 'ft.safetensors'}")
    base = load_model("nafnet-nano")
    swapped = defense.prepare_model(base)
    assert swapped is not base
    tuned = load_model("nafnet-nano", weights=tmp_path / "ft.safetensors").net.state_dict()
    assert all(torch.equal(swapped.net.state_dict()[k], tuned[k]) for k in tuned)
    purify_record, ft_record = defense.record("nafnet-nano")
    assert purify_record["component"] == "purify" and purify_record["t_star"] == 10
    assert len(purify_record["prior"]) == 16 and ft_record["weights"].startswith("file:")


def test_missing_weights_and_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="no such weights file"):
        make_defense(f"ft:{tmp_path / 'missing.safetensors'}")
    with pytest.raises(SpecError, match="no fine-tuned weights are bundled for dwformer-nano"):
        make_defense("ft").prepare_model(load_model("dwformer-nano"))
    with pytest.raises(SpecError, match="t_min ≤ t_max"):
        finetune(FinetuneConfig(model="nafnet-nano", t_min=50, t_max=10), tmp_path / "x.safetensors")
    with pytest.raises(SpecError, match="not on `ft` itself"):
        finetune(FinetuneConfig(model="nafnet-nano", defense="ft"), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_finetune_and_train_prior_commands(tmp_path, prior_file):
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", "--model", "nafnet-nano", "--defense", f"purify:prior={prior_file}",
                                 "--steps", "1", "--batch-size", "1", "--crop", "32",
                                 "--out", str(tmp_path / "ft.safetensors")])
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and (tmp_path / "ft.safetensors").is_file()
    result = runner.invoke(app, ["train-prior", "--steps", "2", "--batch-size", "2", "--crop", "32",
                                 "--out", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    assert "1,063,651 parameters" in result.output
    result = runner.invoke(app, ["train-prior", "--steps", "2", "--out", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 2 and "exists" in result.output


def test_the_perceptual_loss_reads_vgg19_in_torchvisions_layout(tmp_path):
    from udcbench.defenses.finetune import VGG19_CONFIG, VGGPerceptual
    from udcbench.metrics.lpips import vgg_features

    torch.manual_seed(0)
    features = vgg_features(VGG19_CONFIG)  # the full torchvision `features` block, as vgg19-dcbb9e9d.pth stores it
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # the official file also holds the classifier: ignored
    torch.save(state, tmp_path / "vgg19.pth")
    loss_fn, name = make_loss(str(tmp_path / "vgg19.pth"))
    assert name.startswith("L2 + 0.01·VGG-19")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert loss_fn(target, target).item() == 0
    value = loss_fn(x, target)
    value.backward()
    perceptual = VGGPerceptual(tmp_path / "vgg19.pth")
    assert perceptual(x, target).item() > 0 and x.grad.abs().sum() > 0
    del state["features.0.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(Exception, match="lacks the key features.0.weight"):
        make_loss(str(tmp_path / "broken.pth"))
