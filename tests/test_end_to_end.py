"""The README's main job on the whole embedded default (24 images, PGD ε = 8/255, 20 steps)."""

import sqlite3

import pytest
from typer.testing import CliRunner

from udcbench.cli import app


@pytest.mark.slow
def test_headline_command_on_udc_mini(tmp_path):
    out = tmp_path / "demo"
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--model", "uformer", "--attack", "pgd", "--out", str(out)])
    assert first.exit_code == 0, first.output
    with sqlite3.connect(out / "results.db") as conn:
        rows = conn.execute("SELECT psnr_clean_gt, psnr_adv_gt, psnr_adv_clean, psnr_degraded_gt, linf "
                            "FROM results").fetchall()
    assert len(rows) == 24
    clean = sum(r[0] for r in rows) / 24
    attacked = sum(r[1] for r in rows) / 24
    versus_clean = sum(r[2] for r in rows) / 24
    degraded = sum(r[3] for r in rows) / 24
    assert clean - degraded >= 2.0  # the bundled model restores
    assert attacked < clean - 1.0  # PGD at 8/255 hurts against ground truth
    assert versus_clean < 25.0  # and the output moves far from the clean output (31.8 dB clean, 15.9 measured)
    assert max(r[4] for r in rows) <= 8 / 255 + 1e-6
    csv = (out / "leaderboard.csv").read_bytes()
    second = runner.invoke(app, ["run", "--model", "uformer", "--attack", "pgd", "--out", str(out)])
    assert second.exit_code == 0 and "resumed: 24 images" in second.output
    assert (out / "leaderboard.csv").read_bytes() == csv
