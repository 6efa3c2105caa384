"""Interrupting a suite (kill -9 or Ctrl-C) and rerunning the same command gives the uninterrupted result."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

SUITE = """\
suite: resume
data: {name: udc-mini, limit: 5}
seed: 0
models: [nafnet]
attacks:
  - {name: pgd, eps: [2/255, 8/255], steps: 2}
  - fgsm
defenses: [none, jpeg:75]
threats: [gray-box]
"""
ROWS = 5 * 3 * 2  # images × attack settings × defenses; stored 6 at a time (one image, every run)


def command(suite, out):
    return [sys.executable, "-c", "from udcbench.cli import main; main()", "run", "--suite", str(suite),
            "--out", str(out)]


def stored(out) -> int:
    try:
        with sqlite3.connect(out / "results.db", timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def measured(out) -> list[tuple]:
    with sqlite3.connect(out / "results.db") as conn:
        return conn.execute("SELECT run_hash, image, psnr_clean_gt, psnr_adv_gt, ssim_adv_gt, psnr_adv_clean, linf "
                            "FROM results ORDER BY run_hash, image").fetchall()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    suite = folder / "suite.yaml"
    suite.write_text(SUITE)
    out = folder / "whole"
    subprocess.run(command(suite, out), check=True, capture_output=True, timeout=600)
    return suite, out


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_an_interrupted_suite_resumes_to_the_uninterrupted_leaderboard(uninterrupted, tmp_path, how):
    suite, whole = uninterrupted
    seed = random.randrange(1 << 30)
    # a random job: interrupt once this many rows are stored (at least one image of work left)
    stop_after = random.Random(seed).randrange(1, ROWS - 6)
    out = tmp_path / "interrupted"
    # the child gets Ctrl-C as from a shell: a test earlier in the session (Ray) may leave SIGINT ignored in
    # this process, and an ignored signal is inherited, so Python in the child would never raise KeyboardInterrupt
    process = subprocess.Popen(command(suite, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while stored(out) < stop_after and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(how)
    _, err = process.communicate(timeout=120)
    rows_then = stored(out)
    assert 0 < rows_then < ROWS, f"interrupt came too late (seed {seed}, {rows_then} rows)"
    if how == signal.SIGINT:
        assert process.returncode == 130 and "run the same command again" in err
    with sqlite3.connect(out / "results.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    again = subprocess.run(command(suite, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"resumed: {rows_then} rows already in" in again.stdout
    assert stored(out) == ROWS  # no row lost or doubled
    assert measured(out) == measured(whole)
    for name in ("leaderboard.csv", "leaderboard.md"):
        assert (out / name).read_text() == (whole / name).read_text(), f"seed {seed}"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
