"""The attack options of `udcbench run`: parameters, norms, masks, objectives, query counts, LPIPS columns."""

import sqlite3

import pytest
from typer.testing import CliRunner

from udcbench.cli import app, attack_variant, parse_attack_params
from udcbench.errors import UdcbenchError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def rows(out, columns):
    with sqlite3.connect(out / "results.db") as conn:
        return conn.execute(f"SELECT {columns} FROM results ORDER BY image").fetchall()


def test_attack_params_are_typed():
    assert parse_attack_params(["basis=dct", "iterations=30", "p_init=0.1", "random_start=false", "x=none",
                                "alpha=1/255"]) == {"basis": "dct", "iterations": 30, "p_init": 0.1,
                                                    "random_start": False, "x": None, "alpha": "1/255"}
    with pytest.raises(UdcbenchError, match="KEY=VALUE"):
        parse_attack_params(["basis"])


def test_norm_picks_the_variant():
    assert attack_variant("pgd", None) == "pgd"
    assert attack_variant("pgd", "l2") == "pgd-l2"
    assert attack_variant("pgd-l2", "linf") == "pgd"
    assert attack_variant("square", "l2") == "square-l2"
    assert attack_variant("pgd", "linf") == "pgd"
    with pytest.raises(UdcbenchError, match="has no l2 variant"):
        attack_variant("fgsm", "l2")
    with pytest.raises(UdcbenchError, match="use linf or l2"):
        attack_variant("pgd", "l1")


def test_black_box_run_records_queries_and_masked_run_stays_in_the_box(tmp_path):
    out = tmp_path / "bb"
    result = invoke("run", "--model", "uformer-nano", "--attack", "square", "--queries", "20", "--limit", "1",
                    "--mask", "box:0,0,0.5,0.5", "--out", str(out))
    assert result.exit_code == 0, result.output
    ((queries, norm, mask, linf),) = rows(out, "queries, norm, mask, linf")
    assert queries == 20 and norm == "linf" and mask == "box:0,0,0.5,0.5" and 0 < linf <= 8 / 255 + 1e-6
    assert "queries" in (out / "leaderboard.md").read_text()


def test_l2_and_targeted_runs_and_attack_params(tmp_path):
    out = tmp_path / "l2"
    result = invoke("run", "--model", "uformer-nano", "--attack", "pgd", "--norm", "l2", "--eps", "0.5",
                    "--steps", "2", "--objective", "targeted:input", "--limit", "1", "-p", "restarts=1",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    ((attack, norm, eps, l2, objective),) = rows(out, "attack, norm, eps, l2, objective")
    assert (attack, norm, eps, objective) == ("pgd-l2", "l2", 0.5, "targeted:input") and l2 <= 0.5 + 1e-5
    assert "L2 0.5" in (out / "leaderboard.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--attack", "pgd", "-p", "nosuch=1"], "has no parameter(s) nosuch"),
    (["--attack", "square", "--steps", "3"], "has no parameter(s) steps"),
    (["--attack", "pgd", "--objective", "mse"], "unknown objective"),
    (["--attack", "pgd", "--mask", "box:2"], "box:TOP,LEFT,HEIGHT,WIDTH"),
    (["--attack", "pgd", "--lpips", "alex"], "alexnet-owt-7be5be79.pth"),
    (["--attack", "lpips-pgd"], "alexnet-owt-7be5be79.pth"),
    (["--attack", "pgd-l2", "--eps", "-1"], "L2 eps must be positive"),
    (["--attack", "transfer", "--surrogate", "nosuch"], "unknown model 'nosuch'"),
    (["--attack", "simba", "-p", "basis=dct", "-p", "iterations=49153"],
     "iterations=49153 exceeds the 49152 basis directions of a 3×128×128 image"),
    (["--attack", "simba", "-p", "iterations=49153"], "use -p iterations=49152 or fewer"),
])
def test_bad_attack_options_are_one_line_and_write_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    from udcbench.metrics import lpips as lpips_module
    monkeypatch.setattr(lpips_module, "_lpips_package_weights", lambda: [])
    out = tmp_path / "never"
    result = invoke("run", "--model", "uformer-nano", *args, "--limit", "1", "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not out.exists()


def test_lpips_columns_with_weights_in_the_official_format(tmp_path, monkeypatch):
    from lpips_files import write_weights

    from udcbench.metrics import lpips as lpips_module
    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(write_weights(tmp_path / "w", "alex")))
    monkeypatch.setattr(lpips_module, "_lpips_package_weights", lambda: [])
    out = tmp_path / "lp"
    result = invoke("run", "--model", "uformer-nano", "--attack", "lpips-pgd", "--steps", "1", "--lpips", "alex",
                    "--limit", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    ((clean, attacked, versus),) = rows(out, "lpips_clean_gt, lpips_adv_gt, lpips_adv_clean")
    assert clean > 0 and attacked > 0 and versus > 0
    assert "attacked LPIPS" in (out / "leaderboard.md").read_text()


def test_transfer_binds_the_datasets_inputs_to_a_surrogate_that_needs_them(tmp_path):
    out = tmp_path / "transfer"
    result = invoke("run", "--model", "uformer-nano", "--attack", "transfer", "--surrogate", "discnet-nano",
                    "--steps", "2", "--limit", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    ((attack, settings, queries, linf),) = rows(out, "attack, attack_settings, queries, linf")
    assert attack == "transfer" and settings == "surrogate=discnet-nano" and queries == 0
    assert 0 < linf <= 8 / 255 + 1e-6


def test_a_surrogate_needing_inputs_the_dataset_lacks_is_refused_before_writing(tmp_path):
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "udcbench/data/udc_mini/test"
    for kind in ("input", "gt"):
        (tmp_path / "pairs" / kind).mkdir(parents=True)
        shutil.copy(source / kind / "astronaut_00.png", tmp_path / "pairs" / kind)
    out = tmp_path / "never"
    result = invoke("run", "--model", "uformer-nano", "--attack", "transfer", "--surrogate", "discnet-nano",
                    "--data", str(tmp_path / "pairs"), "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs psf_code" in lines[0] and "discnet-nano" in lines[0], result.output
    assert not out.exists()


def test_simba_dct_runs_its_whole_budget_past_the_low_frequencies(tmp_path):
    out = tmp_path / "simba"  # freq_dims 2: 12 low-frequency directions, then the higher shells
    result = invoke("run", "--model", "nafnet-nano", "--attack", "simba", "-p", "basis=dct", "-p", "freq_dims=2",
                    "-p", "iterations=30", "--limit", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    ((iterations, queries),) = rows(out, "iterations, queries")
    assert iterations == 30 and 31 <= queries <= 61
    assert "iterations" in (out / "leaderboard.md").read_text()


def test_cw_rows_show_the_size_of_delta_and_the_fixed_constant_form_is_a_setting(tmp_path):
    out = tmp_path / "cw"
    for extra in (["-p", "search_steps=1"], ["-p", "const=0.05"]):
        result = invoke("run", "--model", "nafnet-nano", "--attack", "cw", "-p", "steps=3", "--limit", "1",
                        "--out", str(out), *extra)
        assert result.exit_code == 0, result.output
    board = (out / "leaderboard.md").read_text()
    assert "‖δ‖₂" in board and "‖δ‖∞" in board and "const=0.05" in board
    assert "‖δ‖₂" in result.output


def test_a_schedule_that_cannot_reach_eps_is_warned_about(tmp_path):
    result = invoke("run", "--model", "nafnet-nano", "--attack", "ifgsm", "--eps", "2/255,8/255", "--steps", "2",
                    "--limit", "1", "--out", str(tmp_path / "ifgsm"))
    assert result.exit_code == 0, result.output
    assert "warning: ifgsm: steps × alpha = 2 × 1/255 = 2/255 < eps 8/255" in " ".join(result.output.split())
    assert "identical run" in result.output
