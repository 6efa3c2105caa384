"""The planner shares work between the runs of a suite without changing a single number."""

import pandas as pd
import pytest
import torch

from udcbench import api
from udcbench.runner.execute import SharedWork
from udcbench.runner.plan import make_plan
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

MEASURED = ["psnr_clean_gt", "ssim_clean_gt", "psnr_adv_gt", "ssim_adv_gt", "psnr_adv_clean", "ssim_adv_clean",
            "psnr_adv_gt_undefended", "psnr_input_adv", "linf", "l2", "objective_adv"]


def spec(attack="fgsm", defense="none", threat="gray-box", limit=3, **changes):
    params = {"fgsm": {"eps": "4/255"}, "pgd": {"eps": "4/255", "steps": 2}, "ifgsm": {"eps": "2/255", "steps": 2},
              "simba": {"eps": "4/255", "iterations": 5}}[attack]
    return RunSpec(model=ModelSpec("nafnet"), attack=AttackSpec.of(attack, **params), defense=DefenseSpec(defense),
                   data=DataSpec("udc-mini", limit=limit), threat=threat, **changes)


def measured(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["run_hash", "image"])[["run_hash", "image"] + MEASURED].reset_index(drop=True)


def test_three_attacks_compute_the_clean_output_once_per_image_and_match_separate_runs():
    specs = [spec("fgsm"), spec("pgd"), spec("ifgsm")]
    frame = api.run_suite(specs)
    work = frame.attrs["work"]
    assert work["computed"]["clean output"] == 3  # once per image ...
    assert work["reused"]["clean output"] == 6  # ... and reused by the two other attacks
    assert work["saved"] == 6  # one forward pass of the model per reuse
    separate = pd.concat([api.run(s) for s in specs])
    pd.testing.assert_frame_equal(measured(frame), measured(separate))


def test_network_passes_are_counted_per_image():
    # per image: f(y); PGD-2 scores y, takes 2 gradient steps (forward + backward each) and scores the last
    # iterate; then f(y')
    job = api.prepare(spec("pgd", limit=2))
    plan = make_plan([job.spec])
    from udcbench.runner.executors import run_unit

    rows, work = run_unit(plan.groups[0].jobs, [0, 1])
    assert len(rows) == 2 and isinstance(work, SharedWork)
    assert work.passes == 2 * (1 + 1 + 2 * 2 + 1 + 1)


def test_gray_box_examples_are_shared_across_defenses_and_threats_stay_apart():
    specs = [spec("pgd", "none"), spec("pgd", "jpeg:75"), spec("pgd", "blur:1.0"),
             spec("pgd", "jpeg:75", threat="adaptive")]
    frame = api.run_suite(specs)
    work = frame.attrs["work"]
    # gray-box: one adversarial example per image for none, jpeg and blur; adaptive crafts its own
    assert work["computed"]["adversarial example"] == 3 * 2 and work["reused"]["adversarial example"] == 3 * 2
    # jpeg's purified clean output is computed once and reused by the adaptive jpeg run
    assert work["computed"]["defended clean output"] == 3 * 2 and work["reused"]["defended clean output"] == 3
    separate = pd.concat([api.run(s) for s in specs])
    pd.testing.assert_frame_equal(measured(frame), measured(separate))
    undefended = frame[frame["defense"] == "none"].set_index("image")["psnr_adv_gt"]
    for defense in ("jpeg:75", "blur:1.0"):  # the same y' went through each defense
        gray = frame[(frame["defense"] == defense) & (frame["threat"] == "gray-box")].set_index("image")
        pd.testing.assert_series_equal(gray["psnr_adv_gt_undefended"], undefended, check_names=False)


def test_batches_are_deterministic_and_part_of_the_run_identity():
    single = api.run(spec("fgsm", limit=4))
    batched = api.run(spec("fgsm", limit=4, batch_size=3))  # a batch of 3 and a batch of 1
    again = api.run(spec("fgsm", limit=4, batch_size=3))
    assert batched.attrs["run_hash"] != single.attrs["run_hash"]
    pd.testing.assert_frame_equal(measured(batched), measured(again))
    assert (batched["batch_size"] == 3).all() and len(batched) == 4
    # FGSM draws nothing: batching changes only float summation order — which can flip the sign of a few
    # near-zero gradient entries (measured here: up to 1.0e-3 dB on this CPU), never more than a trace
    for column in ("psnr_adv_gt", "psnr_clean_gt", "ssim_adv_gt"):
        assert (batched[column].values - single[column].values).__abs__().max() < 5e-3


def test_randomised_attacks_draw_once_per_batch_whatever_shares_the_work():
    alone = api.run(spec("pgd", limit=4, batch_size=2))
    shared = api.run_suite([spec("pgd", limit=4, batch_size=2), spec("fgsm", limit=4, batch_size=2)])
    pd.testing.assert_frame_equal(measured(alone), measured(shared[shared["attack"] == "pgd"]))


def test_bf16_autocast_runs_and_stays_near_fp32():
    fp32 = api.run(spec("fgsm", limit=2))
    bf16 = api.run(spec("fgsm", limit=2, precision="bf16"))
    assert bf16.attrs["run_hash"] != fp32.attrs["run_hash"] and (bf16["precision"] == "bf16").all()
    assert (bf16["psnr_clean_gt"] - fp32["psnr_clean_gt"]).abs().max() < 1.0
    assert bf16[MEASURED].notna().all().all()


def test_device_auto_batch_size_and_precision_are_validated():
    from udcbench.errors import SpecError

    assert api.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SpecError, match="batch-size must be a positive integer"):
        api.prepare(spec(batch_size=0))
    with pytest.raises(SpecError, match="unknown precision 'fp8'; use fp32 or bf16"):
        api.prepare(spec(precision="fp8"))


def test_replay_reproduces_the_stored_row(tmp_path):
    frame = api.run(spec("pgd", "jpeg:75", limit=2, batch_size=2), out=tmp_path)
    row = frame.iloc[1]
    panel = api.replay(tmp_path, row["run_hash"], row["image"])
    from udcbench.metrics import psnr

    assert panel["defended_adv"].shape == (1, 3, 128, 128)
    assert psnr(panel["defended_adv"], panel["gt"]).item() == pytest.approx(row["psnr_adv_gt"], abs=1e-4)
    assert (panel["adversarial"] - panel["degraded"]).abs().max().item() <= 4 / 255 + 1e-6
    assert "nafnet-nano · pgd 4/255 · jpeg:75 · gray-box" == panel["label"]
