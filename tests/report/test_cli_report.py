import torch
from report_helpers import grid_rows, write_grid
from PIL import Image
from typer.testing import CliRunner

from udcbench.runner import run as runner_run
from udcbench.cli import app
from udcbench.report import leaderboard, tables

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *fragments):
    lines = [line for line in result.output.splitlines() if line.strip()]
    return (result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:")
            and all(f in lines[0] for f in fragments))


def test_leaderboard_without_pivot_options_is_the_flat_leaderboard(grid):
    expected = leaderboard.to_markdown(leaderboard.summarise(grid_rows(grid)))
    result = invoke("leaderboard", grid)
    assert result.exit_code == 0 and result.stdout == expected == (grid / "leaderboard.md").read_text()
    result = invoke("leaderboard", grid, "--format", "csv")
    assert result.stdout == (grid / "leaderboard.csv").read_text() and result.stdout.startswith("model,weights")
    assert not list(grid.glob("table-*"))


def test_leaderboard_pivot_prints_and_writes_the_table(grid, tmp_path):
    result = invoke("leaderboard", grid, "--format", "latex")
    written = grid / "table-psnr_gt.tex"
    assert result.exit_code == 0, result.output
    assert result.stdout == written.read_text() and result.stdout.startswith(r"\begin{table}")
    out = tmp_path / "ssim.csv"
    result = invoke("leaderboard", grid, "--rows", "model", "--cols", "defense", "--metric", "ssim_gt",
                    "--where", "attack=pgd", "--where", "eps=8/255", "--format", "csv", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_text() == result.stdout == tables.to_csv(
        tables.pivot(grid_rows(grid), ["model"], ["defense"], "ssim_gt", ["attack=pgd", "eps=8/255"]))
    assert result.stdout.splitlines()[0] == "model,none mean,none std,jpeg:75 mean,jpeg:75 std,threat,seed"
    html = invoke("leaderboard", grid, "--format", "html", "--metric", "clean_psnr_gt")
    assert html.exit_code == 0 and (grid / "table-clean_psnr_gt.html").read_text().startswith("<table")


def test_leaderboard_pivot_errors_are_one_line(tmp_path):
    folder = write_grid(tmp_path / "g", threats=("gray-box", "adaptive"))
    hidden = invoke("leaderboard", folder, "--rows", "model,defense")
    assert one_error_line(hidden, "threat takes gray-box, adaptive", "--where threat=")
    assert one_error_line(invoke("leaderboard", folder, "--metric", "psnr"), "unknown metric", "psnr_gt")
    assert one_error_line(invoke("leaderboard", folder, "--format", "html", "--out", tmp_path / "no" / "t.html"),
                          "folder does not exist")
    assert one_error_line(invoke("leaderboard", tmp_path / "nothing", "--format", "latex"), "results.db")


def test_check_passes_fails_and_reports_each_cell(grid, tmp_path):
    baseline = tmp_path / "ci.csv"
    table = leaderboard.summarise(grid_rows(grid))
    baseline.write_text(leaderboard.to_csv(table))
    passed = invoke("check", grid, "--baseline", baseline)
    assert passed.exit_code == 0 and passed.output.strip() == (
        f"check passed: 12 rows × 7 metrics within ±0.05 dB PSNR / ±0.005 SSIM of {baseline}")
    table.loc[0, "psnr_adv_gt"] += 0.2
    table.loc[1, "ssim_adv_gt"] -= 0.01
    baseline.write_text(leaderboard.to_csv(table))
    failed = invoke("check", grid, "--baseline", baseline, "--tolerance", "0.1")
    lines = failed.output.strip().splitlines()
    assert failed.exit_code == 1 and len(lines) == 3
    assert lines[0].startswith("FAIL model-a · jpeg:75 · gray-box · cw · ") and "psnr_adv_gt" in lines[0]
    assert "tolerance ±0.1 dB" in lines[0] and "ssim_adv_gt" in lines[1] and "(+0.0100, higher: better;" in lines[1]
    assert lines[2].startswith("check failed: 2 cells moved")
    assert one_error_line(invoke("check", grid, "--baseline", tmp_path / "missing.csv"), "does not exist")


def fake_replay(calls):
    def replay(out_dir, run_hash, image):
        calls.append((run_hash, image))
        generator = torch.Generator().manual_seed(len(calls))
        gt = torch.rand(1, 3, 12, 12, generator=generator)
        degraded = gt * 0.5
        return {"degraded": degraded, "adversarial": degraded + 0.01, "restored": gt, "restored_adv": gt * 0.7,
                "defended_adv": gt * 0.9, "gt": gt}
    return replay


def test_plot_writes_both_figures_from_replayed_runs(grid, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner_run, "replay", fake_replay(calls))
    out = tmp_path / "figures"
    result = invoke("plot", grid, "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"psnr_vs_eps.png", "image_grid.png"}
    assert len(calls) == 4 and {image for _, image in calls} == {"img0"}
    assert all("0.03137" in run_hash for run_hash, _ in calls)  # the largest eps, 8/255
    with Image.open(out / "image_grid.png") as image:
        assert image.format == "PNG" and image.height > 4 * 128
    calls.clear()
    chosen = invoke("plot", grid, "--out", out, "--run", "model-b-none-cw", "--image", "img2")
    assert chosen.exit_code == 0 and calls == [("model-b-none-cw-None-gray-box-0", "img2")]
    assert one_error_line(invoke("plot", grid, "--run", "nosuch"), "no run matches --run nosuch")
    assert one_error_line(invoke("plot", grid, "--image", "nosuch"), "available: img0, img1, img2")
