"""Runs with defenses: gray-box vs adaptive threat, purify:auto, what rows and leaderboards record."""

import json

import pandas as pd
import pytest

import udcbench
from udcbench import AttackSpec, DataSpec, ModelSpec, RunSpec
from udcbench.api import prepare
from udcbench.defenses.noise_level import CANDIDATES
from udcbench.errors import SpecError
from udcbench.report import leaderboard
from udcbench.spec import DefenseSpec

from prior_helpers import save_tiny_prior


def spec(defense, threat="gray-box", steps=3, limit=1, eot=None, model="uformer-nano"):
    return RunSpec(model=ModelSpec(model), defense=DefenseSpec(defense),
                   attack=AttackSpec.of("pgd", eps="8/255", steps=steps), data=DataSpec(limit=limit), threat=threat,
                   eot=eot)


@pytest.mark.parametrize("defense", ["blur:1.0", "jpeg:75"])
def test_adaptive_attacks_hurt_the_defended_model_more_than_gray_box(defense):
    """Gray-box δ is aimed at the bare model; adaptive δ differentiates through the defense (BPDA for JPEG)."""
    gray = udcbench.run(spec(defense, steps=3))
    adaptive = udcbench.run(spec(defense, "adaptive", steps=3))
    assert (adaptive["psnr_adv_clean"] < gray["psnr_adv_clean"] - 0.5).all(), (gray["psnr_adv_clean"],
                                                                                 adaptive["psnr_adv_clean"])
    assert gray.attrs["run_hash"] != adaptive.attrs["run_hash"]
    assert list(adaptive["threat"]) == ["adaptive"] and list(gray["threat"]) == ["gray-box"]
    assert adaptive["eot"].tolist() == [1]  # deterministic defense: nothing to average


def test_adaptive_through_purification_uses_eot_and_rows_record_the_defense(prior_file, tmp_path):
    defense = f"purify:t=20,prior={prior_file}"
    rows = udcbench.run(spec(defense, "adaptive", steps=1), out=tmp_path)
    assert rows["eot"].tolist() == [2]
    (record,) = json.loads(rows["defense_params"].iloc[0])
    assert record["component"] == "purify" and record["t_star"] == 20 and record["steps"] == 2
    assert record["tile"] == 64 and len(record["prior"]) == 16
    # the undefended columns score the same adversarial input through the bare model
    assert (rows["psnr_clean_gt_undefended"] != rows["psnr_clean_gt"]).all()
    three = prepare(spec(defense, "adaptive", steps=1, eot=3))
    assert three.labels["eot"] == 3 and three.run_hash != rows.attrs["run_hash"]
    with pytest.raises(SpecError, match="drop --eot"):
        udcbench.run(spec("blur:1.0", "adaptive", eot=3))


def test_another_prior_is_another_run(prior_file, tmp_path):
    other = save_tiny_prior(tmp_path / "other.safetensors", seed=1)
    first = prepare(spec(f"purify:t=20,prior={prior_file}"))
    second = prepare(spec(f"purify:t=20,prior={other}"))
    same = prepare(spec(f"purify:t=20,prior={prior_file}"))
    assert first.run_hash != second.run_hash and first.run_hash == same.run_hash
    assert prepare(spec("none")).labels["defense_params"] is None  # undefended runs record nothing extra


class Sample:
    def __init__(self, name, degraded, gt):
        self.name, self.degraded, self.gt, self.extras = name, degraded, gt, {}


def test_select_t_star_follows_its_criterion_and_is_seeded(tiny_model, images, prior_file):
    from udcbench.defenses import make_defense
    from udcbench.defenses.noise_level import select_t_star

    degraded, gt = images
    dataset = [Sample(f"im{i}", degraded[i], gt[i]) for i in range(2)]
    defense = make_defense(f"purify:auto,n=2,loss=50,prior={prior_file}")
    (component,) = defense.components
    chosen = select_t_star(component, defense, tiny_model, dataset, seed=0)
    record = component.chosen
    table = record["candidates"]
    assert component.t_star == chosen == record["t_star"] and record["met"]
    assert sorted(int(t) for t in table) == [t for t in CANDIDATES if t >= 2]
    allowed = {int(t): v["recovery_db"] for t, v in table.items() if v["clean_loss_db"] <= 50}
    best = max(allowed.values())
    assert chosen == min(t for t, value in allowed.items() if value >= best - 0.01)
    assert record["images"] == ["im0", "im1"]
    # seeded: the same seed measures the same numbers
    again = make_defense(f"purify:auto,n=2,loss=50,prior={prior_file}")
    select_t_star(again.components[0], again, tiny_model, dataset, seed=0)
    assert again.components[0].chosen == record
    # a bound no candidate meets falls back to the smallest candidate and says so
    strict = make_defense(f"purify:auto,n=1,loss=0,prior={prior_file}")
    assert select_t_star(strict.components[0], strict, tiny_model, dataset, seed=0) == 5
    assert strict.components[0].chosen["met"] is False
    with pytest.raises(SpecError, match="needs n ≥ 1"):
        bad = make_defense(f"purify:auto,n=0,prior={prior_file}")
        select_t_star(bad.components[0], bad, tiny_model, dataset, seed=0)


def test_a_purify_auto_run_records_and_shows_its_t_star(prior_file, tmp_path):
    rows = udcbench.run(spec(f"purify:auto,n=1,loss=50,prior={prior_file}", steps=1), out=tmp_path)
    (record,) = json.loads(rows["defense_params"].iloc[0])
    assert record["t_star"] == record["auto"]["t_star"] and record["auto"]["images"] == ["astronaut_00"]
    assert f"(t*={record['t_star']})" in (tmp_path / "leaderboard.md").read_text()


def test_leaderboard_puts_gray_box_and_adaptive_side_by_side():
    base = {"model": "m", "weights": "bundled:x", "defense": "purify+ft", "attack": "pgd", "objective": "mse-clean",
            "eps": 8 / 255, "steps": 20, "seed": 0, "norm": "linf", "psnr_clean_gt": 30.0, "ssim_clean_gt": 0.9,
            "psnr_adv_clean": 25.0, "ssim_adv_clean": 0.8, "psnr_clean_gt_undefended": 31.0,
            "ssim_clean_gt_undefended": 0.91, "psnr_adv_gt_undefended": 15.0, "ssim_adv_gt_undefended": 0.3,
            "defense_params": None}
    rows = pd.DataFrame([{**base, "run_hash": "g", "image": "a", "threat": "gray-box", "psnr_adv_gt": 24.0,
                          "ssim_adv_gt": 0.7},
                         {**base, "run_hash": "g", "image": "b", "threat": "gray-box", "psnr_adv_gt": 26.0,
                          "ssim_adv_gt": 0.7},
                         {**base, "run_hash": "a", "image": "a", "threat": "adaptive", "eot": 2,
                          "psnr_adv_gt": 16.5, "ssim_adv_gt": 0.4}])
    table = leaderboard.summarise(rows)
    assert table["psnr_clean_loss"].tolist() == [1.0, 1.0]
    comparison = leaderboard.threat_comparison(table)
    assert comparison[["gray-box PSNR", "adaptive PSNR", "adaptive − gray-box"]].values.tolist() == [[25.0, 16.5, -8.5]]
    text = leaderboard.to_markdown(table)
    assert "## Gray-box vs adaptive" in text and "undefended attacked PSNR" in text and "clean PSNR loss" in text
    assert "Gray-box vs adaptive" not in leaderboard.to_markdown(table[table["threat"] == "gray-box"])
