import sqlite3

import pytest
from typer.testing import CliRunner

from udcbench.cli import app

runner = CliRunner()
FAST = ["--limit", "2", "--steps", "2"]


def invoke(*args):
    return runner.invoke(app, list(args))


def count_rows(out):
    with sqlite3.connect(out / "results.db") as conn:
        return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def test_run_writes_db_and_leaderboards_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = invoke("run", "--model", "uformer", "--attack", "pgd", *FAST, "--out", str(out))
    assert first.exit_code == 0, first.output
    assert "uformer → uformer-nano" in first.output
    assert {p.name for p in out.iterdir()} >= {"results.db", "leaderboard.md", "leaderboard.csv"}
    csv = (out / "leaderboard.csv").read_bytes()
    assert count_rows(out) == 2
    second = invoke("run", "--model", "uformer", "--attack", "pgd", *FAST, "--out", str(out))
    assert second.exit_code == 0, second.output
    assert "resumed: 2 images" in second.output
    assert count_rows(out) == 2
    assert (out / "leaderboard.csv").read_bytes() == csv
    third = invoke("run", "--model", "uformer", "--attack", "pgd", "--limit", "3", "--steps", "2", "--out", str(out))
    assert third.exit_code == 0 and count_rows(out) == 3  # one more image, the first two resumed


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch"], "uformer-nano"),
    (["--eps", "-1"], "eps"),
    (["--data", "/no/such/dir"], "/no/such/dir"),
    (["--defense", "nosuch"], "none"),
    (["--model", "uformer-t"], "--weights"),
    (["--device", "tpu"], "device"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "never"
    result = invoke("run", *args, *FAST, "--out", str(out))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not out.exists()


def test_random_weights_are_explicit_and_marked(tmp_path):
    out = tmp_path / "r"
    result = invoke("run", "--model", "uformer-t", "--weights", "random", "--limit", "1", "--steps", "1",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "RANDOM" in (out / "leaderboard.md").read_text()


def test_leaderboard_rerenders_from_rows(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", *FAST, "--out", str(out)).exit_code == 0
    csv = (out / "leaderboard.csv").read_text()
    (out / "leaderboard.csv").unlink()
    result = invoke("leaderboard", str(out), "--format", "csv")
    assert result.exit_code == 0 and result.output == csv == (out / "leaderboard.csv").read_text()
    result = invoke("leaderboard", str(out))
    assert result.exit_code == 0 and "| uformer-nano" in result.output
    missing = invoke("leaderboard", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "results.db" in missing.output


@pytest.mark.parametrize("kind, expected", [("models", "uformer-nano"), ("attacks", "pgd"), ("defenses", "none"),
                                            ("datasets", "udc-mini"), ("metrics", "ssim")])
def test_list(kind, expected):
    result = invoke("list", kind)
    assert result.exit_code == 0 and expected in result.output


def test_load_verifies_checkpoints(tmp_path):
    import torch

    from udcbench.models.uformer import CONFIGS, Uformer

    net = Uformer(**CONFIGS["uformer-nano"])
    path = tmp_path / "nano.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    result = invoke("load", "uformer-nano", "--weights", str(path))
    assert result.exit_code == 0, result.output
    assert "752,346" in result.output and "square ×128" in result.output
    result = invoke("load", "wiener")
    assert result.exit_code == 0 and "needs psf" in result.output
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, tmp_path / "wrong.pth")
    result = invoke("load", "uformer-nano", "--weights", str(tmp_path / "wrong.pth"))
    assert result.exit_code == 2 and "missing keys" in result.output and "unexpected keys: conv.weight" in result.output


@pytest.mark.parametrize("command", [[], ["run"], ["list"], ["leaderboard"], ["train"], ["load"]])
def test_help_everywhere(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output
