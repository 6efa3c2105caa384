"""--eps-batch: the gray-box PGD runs of several ε of one attack setting are crafted as one batch. Same random
start and steps as separate runs; a setting of the run's identity (the batch shape), so stacked and separate
rows never mix."""

import dataclasses

import pytest
import torch

from udcbench import api
from udcbench.errors import SpecError
from udcbench.runner.plan import make_plan
from udcbench.runner.suite import Suite
from udcbench.spec import AttackSpec, DataSpec, ModelSpec

EPS = ("1/255", "4/255", "8/255")
METRICS = ["psnr_adv_gt", "ssim_adv_gt", "psnr_adv_clean", "linf", "l2", "objective_adv"]  # for the resume test


def suite(eps_batch: bool, defenses=("none", "jpeg:75")) -> Suite:
    return Suite(models=[ModelSpec("nafnet-nano")], data=[DataSpec(limit=2)],
                 attacks=[AttackSpec.of("pgd", eps=e, steps=3) for e in EPS] + [AttackSpec.of("fgsm", eps="8/255")],
                 defenses=list(defenses), eps_batch=eps_batch)


def measured(frame):
    return frame.sort_values(["attack", "eps", "defense", "image"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def both():
    calls = []

    def hook(module, inputs):
        calls.append(inputs[0].shape[0])

    from udcbench.models.base import RestorationModel

    make_plan(suite(True).specs())  # --memory auto probes each model once per process: not an attack pass
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, i: hook(m, i) if isinstance(m, RestorationModel) and i[0].requires_grad else None)
    try:
        stacked = api.run_suite(suite(True).specs())
        batched_calls = list(calls)
    finally:
        handle.remove()
    return measured(api.run_suite(suite(False).specs())), measured(stacked), batched_calls


def test_stacked_runs_equal_separate_runs_and_are_labelled(both):
    separate, stacked, _ = both
    pgd = stacked["attack"] == "pgd"
    assert (stacked.loc[pgd, "eps_batch"] == len(EPS)).all() and (stacked.loc[~pgd, "eps_batch"] == 1).all()
    assert (separate["eps_batch"] == 1).all()
    differs = set(zip(separate["attack"], separate["run_hash"])) ^ set(zip(stacked["attack"], stacked["run_hash"]))
    assert {attack for attack, _ in differs} == {"pgd"}  # only the stacked runs change identity
    # the larger batch changes float summation order, which can flip the sign of near-zero gradient entries:
    # most rows are bit-identical, the rest within the CI gate's tolerance (measured here: ≤ 0.01 dB)
    same = (stacked["psnr_adv_gt"] == separate["psnr_adv_gt"]).mean()
    assert same >= 0.5
    for column, tolerance in (("psnr_adv_gt", 0.05), ("psnr_adv_clean", 0.05), ("ssim_adv_gt", 0.005)):
        assert (stacked[column] - separate[column]).abs().max() <= tolerance, column
    assert (stacked["linf"] <= stacked["eps"].fillna(1) + 1e-6).all()


def test_one_pass_crafts_every_eps_and_defenses_reuse_it(both):
    _, stacked, calls = both
    # gradient passes: per image (batch 1) PGD's 3 steps run on the stack of 3 eps at once, FGSM's one on 1
    assert sorted(calls) == [1] * 2 + [len(EPS)] * (2 * 3)
    assert set(stacked.loc[stacked["attack"] == "pgd", "defense"]) == {"none", "jpeg:75"}


def test_a_stack_with_a_missing_eps_is_refused():
    specs = [s for s in suite(True, ("none",)).specs() if dict(s.attack.params).get("eps") != "4/255"]
    with pytest.raises(SpecError, match="eps-batch"):
        make_plan(specs)


def test_resuming_recomputes_the_whole_stack(tmp_path):
    specs = suite(True, ("none",)).specs()
    first = measured(api.run_suite(specs, out=tmp_path))
    import sqlite3

    victim = first.loc[(first["attack"] == "pgd") & (first["eps"] == 4 / 255), "run_hash"].iloc[0]
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("DELETE FROM results WHERE run_hash = ? AND image = ?", (victim, first["image"].iloc[0]))
    again = measured(api.run_suite(specs, out=tmp_path))
    for column in METRICS:
        assert (again[column] == first[column]).all(), column


def test_single_eps_or_adaptive_runs_are_not_stacked():
    lone = Suite(models=[ModelSpec("nafnet-nano")], attacks=[AttackSpec.of("pgd", eps="8/255")], eps_batch=True)
    assert [s.eps_batch for s in lone.specs()] == [1]
    adaptive = dataclasses.replace(suite(True, ("jpeg:75",)), threats=["adaptive"])
    assert {s.eps_batch for s in adaptive.specs()} == {1}
