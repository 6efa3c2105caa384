"""Query distillation (udcbench.models.distill): the query budget is exact, the target is only ever evaluated,
the file is reproducible to the byte, its header is right, and anything but a surrogate file is refused."""

import pytest
import torch
from safetensors import safe_open
from torch import nn

from udcbench.data import load_dataset
from udcbench.errors import SpecError
from udcbench.metrics import psnr
from udcbench.models import WEIGHTS_DIR
from udcbench.models.distill import (KIND, SURROGATE_FILE, DistillConfig, distill, load_surrogate, save_canonical,
                                     surrogate_info)

TINY = dict(arch="nafnet-nano", crop=32, steps=2, batch_size=4, eval_limit=2)


class Counted(nn.Module):
    """A black box around a model: counts every image it is asked about and checks that no gradient can form."""

    def __init__(self, model):
        super().__init__()
        self.model, self.info, self.images, self.at_training = model, model.info, 0, None

    @property
    def contract(self):
        return self.model.contract

    def forward(self, image, **extras):
        assert not torch.is_grad_enabled() and not image.requires_grad
        self.images += image.shape[0]
        out = self.model(image, **extras)
        assert not out.requires_grad
        return out

    def progress(self, stage, done, total, loss):
        if stage == "train" and self.at_training is None:
            self.at_training = self.images


def tensors(path):
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


@pytest.mark.parametrize("queries, noise, probe, first_round", [(1, 0.05, 0, 1), (7, 0.05, 0, 7), (9, 0.0, 0, 9),
                                                                 (9, 0.05, 0.5, 5), (8, 0.0, 0.25, 6)])
def test_the_query_count_is_exact_and_no_gradient_reaches_the_target(tmp_path, tiny_model, queries, noise, probe,
                                                                     first_round):
    for parameter in tiny_model.parameters():
        parameter.requires_grad_(True)  # distill must freeze them itself
    target = Counted(tiny_model)
    meta = distill(DistillConfig(queries=queries, noise=noise, probe=probe, **TINY), tmp_path / "s.safetensors",
                   target=target, progress=target.progress)
    assert target.at_training == first_round  # round 1 asked its share; round 2 (probe) the rest
    assert target.images == queries + 2  # then one evaluation query per scored test image, counted apart
    assert meta["queries"] == str(queries) and meta["eval_queries"] == "2"
    assert all(not p.requires_grad and p.grad is None for p in tiny_model.parameters())


def test_same_seed_same_bytes_wherever_written_and_another_seed_differs(tmp_path, tiny_model):
    paths = [tmp_path / "a" / "s.safetensors", tmp_path / "b" / "other.safetensors", tmp_path / "c" / "s.safetensors"]
    for path, seed in zip(paths, (3, 3, 4)):
        distill(DistillConfig(queries=6, seed=seed, **TINY), path, target=tiny_model)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_the_header_records_the_distillation_and_the_fidelity_recomputes(tmp_path, tiny_model):
    out = tmp_path / "s.safetensors"
    meta = distill(DistillConfig(queries=6, seed=1, **TINY), out, target=tiny_model)
    header = surrogate_info(out)
    assert header == meta
    assert header["kind"] == KIND and header["arch"] == "nafnet-nano" and header["target"] == "tiny"
    assert header["target_weights"] == "random:1" and header["data"] == "udc-mini" and header["seed"] == "1"
    assert header["udcbench"] and '"queries": 6' in header["settings"] and "--seed 1" in header["command"]
    surrogate = load_surrogate(out)
    scores = []
    with torch.no_grad():
        for sample in load_dataset("udc-mini", split="test", limit=2):
            scores.append(psnr(surrogate(sample.degraded[None]), tiny_model(sample.degraded[None])).item())
    assert float(header["fidelity_psnr"]) == pytest.approx(sum(scores) / len(scores), abs=1e-3)


def test_load_surrogate_round_trips_the_weights(tmp_path, tiny_model):
    out = tmp_path / "s.safetensors"
    distill(DistillConfig(queries=4, **TINY), out, target=tiny_model)
    model = load_surrogate(out)
    saved = tensors(out)
    assert model.info.name == "nafnet-nano" and model.info.extra["surrogate"]["kind"] == KIND
    assert all(torch.equal(model.net.state_dict()[key], value) for key, value in saved.items())
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    image = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    assert model(image).shape == image.shape


def _wrong_files(tmp_path):
    pth = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, pth)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"plain weights": (WEIGHTS_DIR / "nafnet-nano.safetensors", "plain model checkpoint (nafnet-nano"),
            "prior": (WEIGHTS_DIR / "prior-udc-mini.safetensors", "diffusion prior"),
            "guide": (WEIGHTS_DIR / "guide-udc-mini.safetensors", "guide network"),
            "pth": (pth, "a .pth file"), "garbage": (garbage, "not readable as safetensors"),
            "folder": (folder, "a folder"), "missing": (tmp_path / "nothing.safetensors", "does not exist")}


@pytest.mark.parametrize("kind", ["plain weights", "prior", "guide", "pth", "garbage", "folder", "missing"])
def test_a_file_that_is_not_a_surrogate_is_refused_in_one_line(tmp_path, kind):
    path, what = _wrong_files(tmp_path)[kind]
    for read in (surrogate_info, load_surrogate):
        with pytest.raises(SpecError) as caught:
            read(path)
        message = str(caught.value)
        assert "\n" not in message and what in message and "udcbench distill" in message, message


def test_a_damaged_surrogate_header_is_refused(tmp_path):
    path = tmp_path / "s.safetensors"
    save_canonical({"w": torch.zeros(2)}, path, {"kind": KIND})
    with pytest.raises(SpecError, match="names no arch"):
        load_surrogate(path)
    save_canonical({"w": torch.zeros(2)}, path, {"kind": KIND, "arch": "nafnet-nano"})
    with pytest.raises(SpecError, match="does not load as its arch nafnet-nano"):
        load_surrogate(path)


@pytest.mark.parametrize("settings, message", [
    ({"queries": 0}, "--queries must be a positive"), ({"queries": -3}, "--queries must be a positive"),
    ({"crop": 0}, "--crop"), ({"noise": 2.0}, "--noise"), ({"eval_limit": 0}, "--eval-limit"),
    ({"probe": 1.0}, "--probe"), ({"patch": 64}, "--patch"), ({"threads": 0}, "--threads"),
    ({"arch": "nosuch"}, "unknown model 'nosuch'"), ({"arch": "wiener"}, "no trainable weights"),
    ({"crop": 4096}, "exceeds the smallest train image")])
def test_bad_settings_fail_before_any_query_or_write(tmp_path, tiny_model, settings, message):
    target = Counted(tiny_model)
    config = DistillConfig(**{**dict(queries=4, **TINY), **settings})
    with pytest.raises(SpecError, match=message):
        distill(config, tmp_path / "out" / "s.safetensors", target=target)
    assert target.images == 0 and not (tmp_path / "out").exists()


def test_the_bundled_surrogate_distils_uformer_nano():
    path = WEIGHTS_DIR / SURROGATE_FILE
    header = surrogate_info(path)
    assert header["target"] == "uformer-nano" and header["data"] == "udc-mini" and header["arch"] == "nafnet-nano"
    assert int(header["queries"]) <= int(header["query_budget"]) and float(header["fidelity_psnr"]) > 25
    model = load_surrogate(path)
    assert model.info.name == "nafnet-nano" and model.info.parameters < 1_000_000
