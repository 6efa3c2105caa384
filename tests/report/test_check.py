import pandas as pd
import pytest
from report_helpers import grid_rows, write_grid

from udcbench.report import check, leaderboard

CELL = "model-a · jpeg:75 · gray-box · pgd 8/255 · mse-clean · steps 10 · seed 0 · weights bundled"


def baseline_of(folder, path, edit=None):
    """The folder's own leaderboard CSV, optionally edited (a frame -> frame function)."""
    table = leaderboard.summarise(grid_rows(folder))
    if edit is not None:
        table = edit(table)
    path.write_text(leaderboard.to_csv(table))
    return path


def shift(metric, amount, model="model-a", defense="jpeg:75", eps="8/255"):
    def edit(table):
        where = (table["model"] == model) & (table["defense"] == defense) & (table["eps"] == eps)
        assert where.sum() == 1
        table.loc[where, metric] = table.loc[where, metric] + amount
        return table
    return edit


def test_unchanged_results_pass(grid, tmp_path):
    result = check.check(grid, baseline_of(grid, tmp_path / "base.csv"))
    assert result.passed and not result.failures and not result.new
    # 2 models × 2 defenses × 3 attacks; clean/attacked PSNR and SSIM, vs clean out, attacked LPIPS
    assert result.rows == 12 and result.metrics == 7
    assert result.summary() == (f"check passed: 12 rows × 7 metrics within ±0.05 dB PSNR / ±0.005 SSIM of "
                                f"{tmp_path / 'base.csv'}")


def test_a_drop_in_one_cell_fails_naming_that_cell_only(grid, tmp_path):
    # the baseline was 0.2 dB higher: the results dropped 0.2 dB in that cell
    result = check.check(grid, baseline_of(grid, tmp_path / "base.csv", shift("psnr_adv_gt", 0.2)))
    assert not result.passed and len(result.failures) == 1
    finding = result.failures[0]
    assert finding.kind == "moved" and finding.metric == "psnr_adv_gt" and finding.configuration == CELL
    assert finding.describe() == (f"{CELL}: psnr_adv_gt (attacked PSNR) 23.20 → 23.00 (-0.20 dB, lower: worse; "
                                  "tolerance ±0.05 dB)")
    assert result.summary().startswith("check failed: 1 cell moved")


def test_tolerance_boundary_is_inclusive(grid, tmp_path):
    at = check.check(grid, baseline_of(grid, tmp_path / "a.csv", shift("psnr_adv_gt", 0.05)))
    beyond = check.check(grid, baseline_of(grid, tmp_path / "b.csv", shift("psnr_adv_gt", 0.06)))
    assert at.passed and not beyond.passed
    ssim_at = check.check(grid, baseline_of(grid, tmp_path / "c.csv", shift("ssim_adv_gt", -0.005)))
    ssim_beyond = check.check(grid, baseline_of(grid, tmp_path / "d.csv", shift("ssim_adv_gt", -0.006)))
    assert ssim_at.passed and not ssim_beyond.passed
    loose = check.check(grid, tmp_path / "b.csv", tolerance=0.1)
    assert loose.passed and "±0.1 dB PSNR" in loose.summary()


def test_direction_wording(grid, tmp_path):
    up = check.check(grid, baseline_of(grid, tmp_path / "a.csv", shift("psnr_adv_gt", -0.3)))
    assert "(+0.30 dB, higher: better;" in up.failures[0].describe()
    ssim = check.check(grid, baseline_of(grid, tmp_path / "b.csv", shift("ssim_clean_gt", 0.01)))
    assert "(-0.0100, lower: worse;" in ssim.failures[0].describe()
    lpips = check.check(grid, baseline_of(grid, tmp_path / "c.csv", shift("lpips_adv_gt", -0.01)))
    assert "(+0.0100, higher: worse;" in lpips.failures[0].describe()  # LPIPS: lower is better


def test_missing_rows_and_image_counts_fail(grid, tmp_path):
    def add_row(table):
        extra = table.iloc[[0]].assign(model="model-c")
        return pd.concat([table, extra], ignore_index=True)

    missing = check.check(grid, baseline_of(grid, tmp_path / "a.csv", add_row))
    assert [f.kind for f in missing.failures] == ["missing"]
    assert missing.failures[0].describe() == ("missing (in baseline, not in results): model-c · jpeg:75 · gray-box · "
                                              "cw · mse-clean · steps 100 · seed 0 · weights bundled (3 images)")
    fewer = write_grid(tmp_path / "fewer", images=2)
    counts = check.check(fewer, baseline_of(grid, tmp_path / "b.csv"))
    # the means over 2 of the 3 images moved too, but rows of another image count are not compared
    assert [f.kind for f in counts.failures] == ["images"] * 12 and counts.rows == 0
    assert "leaderboard has 2 images per run, baseline 3" in counts.failures[0].describe()


def test_new_rows_are_listed_and_fail_only_when_strict(grid, tmp_path):
    path = baseline_of(grid, tmp_path / "base.csv", lambda table: table[table["attack"] != "cw"])
    result = check.check(grid, path)
    assert result.passed and len(result.new) == 4 and result.rows == 8
    assert all(f.describe().startswith("new (not in baseline): ") and " · cw · " in f.describe() for f in result.new)
    assert result.summary().endswith("; 4 new rows not in baseline")
    strict = check.check(grid, path, strict=True)
    assert not strict.passed and "4 new rows (--strict)" in strict.summary()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "cannot read baseline"),
    ("model,weights,defense,attack,objective,eps,steps,seed,images,psnr_adv_gt\n", "lacks the column(s) threat"),
    ("model,weights,defense,threat,attack,objective,eps,steps,seed,images,psnr_adv_gt\n"
     "m,bundled,none,gray-box,pgd,mse-clean,8/255,20,0,3,high\n", "psnr_adv_gt holds 'high' on line 2"),
])
def test_malformed_baseline_is_a_clear_error(grid, tmp_path, content, message):
    path = tmp_path / "base.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(check.BaselineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check.check(grid, path)


def test_keys_compare_as_text(grid, tmp_path):
    # eps '8/255' and '-', and seed '0', read back from CSV as text match the recomputed leaderboard
    path = baseline_of(grid, tmp_path / "base.csv")
    frame = check.read_baseline(path)
    assert set(frame["eps"]) == {"2/255", "8/255", "-"} and set(frame["seed"]) == {"0"}
    assert frame["psnr_adv_gt"].dtype.kind == "f"


def test_a_compiled_run_is_checked_against_the_eager_baseline(grid, tmp_path):
    base = baseline_of(grid, tmp_path / "base.csv")
    current = leaderboard.summarise(grid_rows(grid))
    assert set(current["backend"]) == {"eager"}
    current["backend"] = "compiled"  # how it ran, not what it measured: same configuration
    result = check.compare(current, check.read_baseline(base))
    assert result.passed and result.rows == 12 and not result.new
