"""A metric defined in ONE file of another distribution, found through the `udcbench.metrics` entry-point group:
it is listed, scored into the stored rows, shown in the leaderboard and pivot tables, and checked by
`udcbench check` with its own direction (lower is better) and tolerance — no file of udcbench knows it."""

import pandas as pd
import pytest
from plugin_helpers import install_plugin
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.registry import METRICS
from udcbench.report import tables
from udcbench.runner.store import open_existing

PLUGIN = '''"""grad-gap: mean absolute difference of horizontal and vertical image gradients (lower is better)."""
from udcbench.registry import register_metric


@register_metric("grad-gap", higher_is_better=False, label="GradGap", digits=3, tolerance=0.02, min_size=2,
                 description="mean |∇a − ∇b| over both axes")
def grad_gap(a, b):
    dx = (a.diff(dim=-1) - b.diff(dim=-1)).abs().flatten(1).mean(dim=1)
    dy = (a.diff(dim=-2) - b.diff(dim=-2)).abs().flatten(1).mean(dim=1)
    return (dx + dy) / 2
'''
COLUMNS = ["grad_gap_clean_gt", "grad_gap_adv_gt", "grad_gap_adv_clean", "grad_gap_clean_gt_undefended",
           "grad_gap_adv_gt_undefended"]
runner = CliRunner()


@pytest.fixture
def installed(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, METRICS, "udcbench_gradgap", PLUGIN, "grad-gap")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_third_party_metric_goes_through_every_stage(installed, tmp_path):
    listed = invoke("list", "metrics")
    assert listed.exit_code == 0 and "grad-gap" in listed.output and "lower" in listed.output, listed.output

    out = tmp_path / "run"
    result = invoke("run", "--model", "nafnet", "--attack", "fgsm", "--defense", "jpeg:75", "--limit", "2",
                    "--metrics", "psnr,ssim,grad-gap", "--out", out)
    assert result.exit_code == 0, result.output
    store = open_existing(out)
    rows = store.rows()
    store.close()
    assert rows[COLUMNS].notna().all().all() and (rows[COLUMNS] >= 0).all().all()
    assert (rows["grad_gap_clean_gt"] != rows["grad_gap_adv_gt"]).any()

    board = pd.read_csv(out / "leaderboard.csv")
    assert set(COLUMNS) <= set(board.columns)
    assert board.loc[0, "grad_gap_adv_gt"] == round(rows["grad_gap_adv_gt"].mean(), 3)
    assert "attacked GradGap" in (out / "leaderboard.md").read_text()

    table = tables.pivot(rows, ["model"], ["defense"], "grad_gap_gt")  # short name, as psnr_gt
    assert table.metric == "grad_gap_adv_gt" and table.digits == 3
    assert table.caption.startswith("Attacked GradGap: restored attacked input vs ground truth")

    # check: within the metric's own tolerance (0.02) passes, beyond it fails as 'higher: worse'
    near, far = tmp_path / "near.csv", tmp_path / "far.csv"
    board.assign(grad_gap_adv_gt=board["grad_gap_adv_gt"] - 0.015).to_csv(near, index=False)
    board.assign(grad_gap_adv_gt=board["grad_gap_adv_gt"] - 0.03).to_csv(far, index=False)
    passed = invoke("check", out, "--baseline", near)
    assert passed.exit_code == 0 and "±0.02 GradGap" in passed.output, passed.output
    failed = invoke("check", out, "--baseline", far)
    assert failed.exit_code == 1, failed.output
    assert "grad_gap_adv_gt (attacked GradGap)" in failed.output and "higher: worse" in failed.output
    assert "tolerance ±0.02" in failed.output
    loose = invoke("check", out, "--baseline", far, "--metric-tolerance", "grad-gap=0.05")
    assert loose.exit_code == 0, loose.output


def test_two_best_cells_follow_the_metric_direction(installed, tmp_path):
    out = tmp_path / "run"
    for model in ("nafnet", "uformer"):
        result = invoke("run", "--model", model, "--attack", "fgsm", "--limit", "1", "--metrics", "grad-gap",
                        "--out", out)
        assert result.exit_code == 0, result.output
    store = open_existing(out)
    rows = store.rows()
    store.close()
    table = tables.pivot(rows, ["model"], ["attack"], "grad_gap_adv_gt")
    means = {row[0]: table.cells[(row, ("fgsm",))].mean for row in table.row_keys}
    best = min(means, key=means.get)
    assert {key[0][0] for key in table.best} == {best} and "lower is better" in table.caption


def test_a_metric_that_cannot_score_the_images_is_refused_before_anything_is_written(installed, tmp_path):
    from udcbench.metrics.base import check_sizes, get_metric
    from udcbench.errors import SpecError

    with pytest.raises(SpecError, match="at least 31×31"):
        check_sizes([get_metric("lpips-alex")], [(24, 24)], "tiny")
    result = invoke("run", "--model", "nafnet", "--attack", "fgsm", "--limit", "1", "--metrics", "no-such-metric",
                    "--out", tmp_path / "never")
    assert result.exit_code == 2 and "unknown metric 'no-such-metric'" in result.output
    assert not (tmp_path / "never").exists()


def test_lpips_on_images_below_its_minimum_size_is_refused_up_front(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from lpips_files import write_weights

    write_weights(tmp_path / "lpips", "alex")
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(tmp_path / "lpips"))
    for folder in ("input", "gt"):
        (tmp_path / "pairs" / folder).mkdir(parents=True)
        Image.fromarray(np.full((24, 24, 3), 120, np.uint8)).save(tmp_path / "pairs" / folder / "a.png")
    for flag in (["--lpips", "alex"], ["--metrics", "lpips-alex"]):
        result = invoke("run", "--model", "nafnet", "--attack", "fgsm", "--data", f"pairs:{tmp_path / 'pairs'}",
                        *flag, "--out", tmp_path / "out")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "lpips-alex needs images of at least 31×31 px" in lines[0] and "24×24" in lines[0]
        assert not (tmp_path / "out").exists()
