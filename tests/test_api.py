import pandas as pd
import pytest

import udcbench
from udcbench import AttackSpec, DataSpec, ModelSpec, RunSpec
from udcbench.errors import SpecError


def spec(seed=0, **attack):
    params = {"eps": "8/255", "steps": 2, **attack}
    return RunSpec(model=ModelSpec("uformer"), attack=AttackSpec.of("pgd", **params), data=DataSpec(limit=2),
                   seed=seed)


NUMBERS = ["psnr_clean_gt", "psnr_adv_gt", "ssim_adv_gt", "psnr_adv_clean", "linf", "l2"]


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    a = udcbench.run(spec(seed=1), out=tmp_path / "a")
    b = udcbench.run(spec(seed=1), out=tmp_path / "b")
    c = udcbench.run(spec(seed=2))
    pd.testing.assert_frame_equal(a[NUMBERS], b[NUMBERS])
    assert (tmp_path / "a" / "leaderboard.csv").read_bytes() == (tmp_path / "b" / "leaderboard.csv").read_bytes()
    assert not a["psnr_adv_clean"].equals(c["psnr_adv_clean"])
    assert (a["seed"] == 1).all()


def test_attack_hurts_on_the_trained_model():
    rows = udcbench.run(spec(steps=5))
    assert (rows["psnr_adv_clean"] < 45).all()
    assert (rows["psnr_adv_gt"] < rows["psnr_clean_gt"]).all()
    assert (rows["linf"] <= 8 / 255 + 1e-6).all()


def test_results_do_not_depend_on_limit_or_order():
    two = udcbench.run(spec())
    three = udcbench.run(RunSpec(model=ModelSpec("uformer"), attack=AttackSpec.of("pgd", eps="8/255", steps=2),
                                 data=DataSpec(limit=3)))
    pd.testing.assert_frame_equal(two[NUMBERS], three[NUMBERS].iloc[:2])
    assert two.attrs["run_hash"] == three.attrs["run_hash"]


def test_public_api_factories():
    assert udcbench.make_defense("none").is_identity
    assert [c.name for c in udcbench.make_defense("none+none").components] == ["none", "none"]
    with pytest.raises(SpecError):
        udcbench.make_defense("none+")
    assert len(udcbench.load_dataset("udc-mini", limit=3)) == 3
    assert udcbench.load_model("uformer").info.weights.startswith("bundled:")


def test_the_default_run_keeps_its_hash_across_versions():
    """Old results.db files resume only if an unchanged spec hashes the same: pinned for the README's default run
    (uformer-nano, pgd 8/255, udc-mini test, seed 0, no defense), unchanged since the first release."""
    from udcbench.api import prepare

    assert prepare(RunSpec()).run_hash == "86ee3c7db3102317"


def test_model_options_are_recorded_with_the_run_and_separate_runs():
    """Uformer's training patch is part of the run: in every row (model_options) and, where it is not the
    configuration's pre-options build (uformer-nano at 128), in the run hash."""
    from udcbench.api import prepare

    def job(model):
        return prepare(RunSpec(model=ModelSpec(model, "random"), data=DataSpec(limit=1)))

    small, large = job("uformer-t:train_patch=128"), job("uformer-t:train_patch=256")
    assert small.labels["model_options"] == "train_patch=128" and large.labels["model_options"] == "train_patch=256"
    assert small.labels["model"] == large.labels["model"] == "uformer-t"
    assert small.run_hash != large.run_hash
    assert job("uformer-t").run_hash == small.run_hash  # 128 is the default
    nano = prepare(RunSpec())
    assert nano.labels["model_options"] == "train_patch=128" and nano.run_hash == "86ee3c7db3102317"
    assert prepare(RunSpec(model=ModelSpec("uformer-nano:train_patch=256"))).run_hash != nano.run_hash
