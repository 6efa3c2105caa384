"""`udcbench check` when the results were scored on other images than the baseline (a run with --limit, another
dataset size): the mismatch is reported as such — once when every matched row shares it, else once per
configuration — and the metrics of those rows are not listed as moved (they average other images)."""

import pandas as pd
from report_helpers import grid_rows, write_grid
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.report import check, leaderboard

runner = CliRunner()
HINT = "covered a different part of the data (--limit?); rerun without --limit or regenerate the baseline"


def baseline(folder, path, edit=None):
    table = leaderboard.summarise(grid_rows(folder))
    path.write_text(leaderboard.to_csv(table if edit is None else edit(table)))
    return path


def rows_of(model, defense):
    return lambda table: (table["model"] == model) & (table["defense"] == defense)


def test_a_limited_run_against_a_full_baseline_is_one_line_and_exit_1(grid, tmp_path):
    # the baseline: the 3-image grid with 8 images per row and every PSNR 0.4 dB higher (as a full run would be)
    def full(table):
        psnr = [c for c in table.columns if c.startswith("psnr")]
        return table.assign(images=8, **{c: table[c] + 0.4 for c in psnr})

    path = baseline(grid, tmp_path / "base.csv", full)
    result = check.check(grid, path)
    assert not result.passed and result.rows == 0
    assert [f.kind for f in result.failures] == ["images"] * 12  # no "moved" finding: nothing compared
    assert result.report_lines() == [f"image count: leaderboard has 3 images per run, baseline 8 (all 12 rows found "
                                     f"in both) — the runs {HINT} (metrics of such rows are not compared)"]
    assert result.summary().startswith("check failed: 12 rows with another image count (not compared) — 0 rows")
    cli = runner.invoke(app, ["check", str(grid), "--baseline", str(path)])
    lines = cli.output.splitlines()
    assert cli.exit_code == 1 and len(lines) == 2, cli.output
    assert lines[0].startswith("FAIL image count: leaderboard has 3 images per run, baseline 8")
    assert "→" not in cli.output and "moved" not in cli.output


def test_rows_with_another_count_are_named_one_by_one_and_the_others_still_compared(grid, tmp_path):
    def edit(table):
        table.loc[rows_of("model-a", "none")(table), "images"] = 8  # 3 configurations (pgd 2/255, 8/255, cw)
        table.loc[rows_of("model-a", "none")(table), "psnr_adv_gt"] += 1.0  # not reported: not comparable
        table.loc[rows_of("model-b", "none")(table), "psnr_adv_gt"] += 1.0  # same images: reported as moved
        return table

    result = check.check(grid, baseline(grid, tmp_path / "base.csv", edit))
    kinds = [f.kind for f in result.failures]
    assert kinds.count("images") == 3 and kinds.count("moved") == 3 and result.rows == 9
    assert all(f.configuration.startswith("model-b · none") for f in result.failures if f.kind == "moved")
    lines = result.report_lines()
    assert len(lines) == 6  # not collapsed: the other rows have the baseline's count
    counts = [line for line in lines if line.startswith("image count: ")]
    assert len(counts) == 3 and all(line.startswith("image count: model-a · none · gray-box · ") for line in counts)
    assert all("leaderboard has 3 images per run, baseline 8 — the run " + HINT in line for line in counts)


def test_different_mismatches_are_not_merged(grid, tmp_path):
    def edit(table):
        table["images"] = 8
        table.loc[rows_of("model-b", "jpeg:75")(table), "images"] = 5
        return table

    result = check.check(grid, baseline(grid, tmp_path / "base.csv", edit))
    lines = result.report_lines()
    assert len(lines) == 12 and all(line.startswith("image count: model-") for line in lines)
    assert sum("baseline 5 —" in line for line in lines) == 3


def test_missing_rows_are_still_listed_beside_the_shared_count(tmp_path):
    fewer = write_grid(tmp_path / "fewer", images=1)
    full = write_grid(tmp_path / "full", images=3)

    def extra(table):
        return pd.concat([table, table.iloc[[0]].assign(model="model-c")], ignore_index=True)

    result = check.check(fewer, baseline(full, tmp_path / "base.csv", extra))
    lines = result.report_lines()
    assert lines[0].startswith("image count: leaderboard has 1 image per run, baseline 3 (all 12 rows")
    assert len(lines) == 2 and lines[1].startswith("missing (in baseline, not in results): model-c · ")
