"""Faults and hostile files: kill -9, SIGTERM and Ctrl-C at random moments, a full disk, a 0-byte or foreign
results.db, two runs on one --out. Every case ends with the uninterrupted run's leaderboard, each row stored
(and computed) once, an intact database, or — for a file that is not ours — one error line and nothing written.

Torch runs on one thread here (OMP_NUM_THREADS=1 in the children, torch.set_num_threads(1) in this process):
on a loaded machine two processes each spinning two threads are many times slower, and a CPU's float sums
depend on how the work is split, so every run that is compared must use the same count."""

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.errors import StoreError
from udcbench.runner.claims import CLAIM_TIMEOUT_S, Claims
from udcbench.runner.plan import Unit
from udcbench.runner.store import COLUMN_NAMES, ResultStore

IMAGES = 4
FAST = ["--limit", str(IMAGES), "--steps", "2"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
INTERRUPTED = ("interrupted: every finished batch is stored in {}; run the same command again to finish only what "
               "is missing")


def command(out):
    return [sys.executable, "-m", "udcbench.cli", "run", *FAST, "--out", str(out)]


def start(out) -> subprocess.Popen:
    # the child gets SIGINT's default disposition: an earlier in-process test (Ray) may leave it ignored here,
    # and an ignored signal is inherited (see test_resume.py)
    return subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def query(out, sql: str, *args):
    """One value from results.db, read only (never creating the file, as a plain connect would); 0 if absent."""
    path = out / "results.db"
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet
        return 0


def stored(out) -> int:
    return query(out, "SELECT COUNT(*) FROM results")


def intact(out) -> bool:
    return query(out, "PRAGMA integrity_check") == "ok"


def row(run_hash, image):
    return dict({name: None for name in COLUMN_NAMES}, run_hash=run_hash, image=image)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "whole"
    subprocess.run(command(out), check=True, capture_output=True, env=ENV, timeout=600)
    return out


def assert_like_reference(out, reference):
    assert stored(out) == IMAGES and intact(out)  # no row lost or doubled
    assert query(out, "SELECT COUNT(*) FROM claims") == 0  # every claim released or taken over
    for name in ("leaderboard.csv", "leaderboard.md"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_runs_interrupted_at_random_moments_resume_to_the_reference(reference, tmp_path, how):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = tmp_path / "out"
    for trial in range(2):
        before = stored(out)
        target = before + rng.randrange(2)  # signal once this many rows are stored (work is always left)
        process = start(out)
        deadline = time.time() + 300
        # the run has started once this process holds a claim (or stored a row): the handler is installed
        while process.poll() is None and time.time() < deadline and not (
                stored(out) >= target and (stored(out) > before or query(
                    out, "SELECT COUNT(*) FROM claims WHERE pid = ?", process.pid))):
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.2))
        process.send_signal(how)
        _, err = process.communicate(timeout=120)
        context = f"seed {seed}, trial {trial}, {stored(out)} rows: {err}"
        assert process.returncode == (-signal.SIGKILL if how == signal.SIGKILL else 143), context
        if how == signal.SIGTERM:
            assert lines(err) == [INTERRUPTED.format(out / "results.db")], context
            assert query(out, "SELECT COUNT(*) FROM claims") == 0, context  # released on the way out
        assert stored(out) < IMAGES and intact(out), context
    again = subprocess.run(command(out), capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr
    assert_like_reference(out, reference)


@pytest.mark.slow
def test_two_runs_on_one_out_compute_each_row_once(reference, tmp_path):
    out = tmp_path / "shared"
    processes = [start(out) for _ in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    assert query(out, "SELECT COUNT(DISTINCT run_hash) FROM results") == 1
    assert_like_reference(out, reference)
    computed = []
    for text, _ in outputs:
        shared = re.search(r"computed (\d+) rows, (\d+) by another process", text)
        resumed = re.search(r"resumed: \d+ images already in .*, (\d+) computed now", text)
        if shared:
            assert int(shared[1]) + int(shared[2]) == IMAGES, text
        computed.append(int(shared[1]) if shared else int(resumed[1]) if resumed else IMAGES)
        # each prints the complete leaderboard: all images of the run, whoever computed them
        assert re.search(rf"uformer-nano\s*│\s*none\s*│\s*pgd\s*│\s*8/255\s*│\s*{IMAGES}\s*│", text), text
    assert sum(computed) == IMAGES, outputs


def test_a_full_disk_is_one_line_and_the_next_run_finishes(reference, tmp_path, monkeypatch, one_thread):
    out = tmp_path / "full"
    out.mkdir()
    # other data on the disk: rows of another run fill most of the first page of the results table, and the
    # "disk" holds no page more (the testing hook), so only a row or two of this run fit (about two, measured)
    store = ResultStore(out / "results.db")
    store.add_many([dict(row("filler", f"{i}"), attack_params="x" * 500) for i in range(5)])
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.close()
    monkeypatch.setenv("UDCBENCH_MAX_PAGE_COUNT", str(pages))
    full = invoke("run", *FAST, "--out", out)
    assert full.exit_code == 2, full.output
    (line,) = lines(full.stderr)
    kept = stored(out)
    assert 5 < kept < 5 + IMAGES and intact(out), line  # whole batches of this run, the filler untouched
    assert line.startswith(f"error: the disk holding {out / 'results.db'} is full (database or disk is full); ")
    assert line.endswith(f"free space and run the same command again — the {kept} rows stored so far are kept")
    assert query(out, "SELECT COUNT(*) FROM claims") == 0
    assert not (out / "leaderboard.csv").exists()

    monkeypatch.delenv("UDCBENCH_MAX_PAGE_COUNT")
    with sqlite3.connect(out / "results.db") as conn:  # free space
        conn.execute("DELETE FROM results WHERE run_hash = 'filler'")

    def no_space(path, data):
        raise OSError(28, "No space left on device")

    # the rows fit now, the leaderboard files do not
    monkeypatch.setattr("udcbench.report.leaderboard.write_atomic", no_space)
    files = invoke("run", *FAST, "--out", out)
    assert files.exit_code == 2 and lines(files.stderr) == [
        f"error: the disk holding the leaderboard files in {out} is full (No space left on device); free space "
        f"and run the same command again — the {IMAGES} rows stored so far are kept"], files.output
    monkeypatch.undo()

    done = invoke("run", *FAST, "--out", out)
    assert done.exit_code == 0 and f"resumed: {IMAGES} images already in" in done.output, done.output
    assert_like_reference(out, reference)


@pytest.mark.parametrize("content", [b"", b"udcbench results, honest\n"], ids=["0-byte", "not-sqlite"])
def test_a_results_db_that_is_not_a_store_is_refused_and_nothing_is_written(tmp_path, content, one_thread):
    out = tmp_path / "hostile"
    out.mkdir()
    (out / "results.db").write_bytes(content)
    (out / "leaderboard.md").write_text("the leaderboard of a real run\n")
    expected = ("is empty (0 bytes), not the results of a run; delete it or pass the --out folder of a udcbench run"
                if not content else "is not a SQLite database (it starts with")
    for result in (invoke("run", *FAST, "--out", out), invoke("leaderboard", out),
                   invoke("leaderboard", out, "--format", "csv")):
        assert result.exit_code == 2, result.output
        (line,) = lines(result.output)
        assert line.startswith(f"error: {out / 'results.db'} ") and expected in line, line
    assert sorted(os.listdir(out)) == ["leaderboard.md", "results.db"]
    assert (out / "results.db").read_bytes() == content
    assert (out / "leaderboard.md").read_text() == "the leaderboard of a real run\n"


@pytest.mark.parametrize("mode, signalled", [("single", "term"), ("single", "ctrl-c"), ("many", "term")])
def test_a_signal_during_a_run_is_one_line_and_its_exit_code(tmp_path, monkeypatch, mode, signalled):
    import udcbench.cli.run as cli_run

    def interrupted(*args, **kwargs):
        kwargs["progress"](0, IMAGES, "")
        if signalled == "ctrl-c":
            raise KeyboardInterrupt
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise AssertionError("no SIGTERM handler during the run")  # (sending it would end this test session)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises long before this ends
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(cli_run, "run_spec" if mode == "single" else "run_suite", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    eps = ["--eps", "4/255,8/255"] if mode == "many" else []
    result = invoke("run", *FAST, *eps, "--out", tmp_path / "out")
    assert result.exit_code == (143 if signalled == "term" else 130), result.output
    assert lines(result.stderr) == [INTERRUPTED.format(tmp_path / "out" / "results.db")]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_claims_split_a_unit_and_are_taken_over_when_their_process_is_gone(tmp_path):
    path = tmp_path / "results.db"
    other, this = ResultStore(path), ResultStore(path)
    theirs, ours = Claims(other), Claims(this)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs.pid = sleeper.pid  # the claims of "another process", alive until the sleeper ends
        unit = Unit(group=0, indices=[0, 1], names=["a", "b"], runs=["h1", "h2"])
        first = theirs.claim(unit)
        assert first.ours.runs == ["h1", "h2"] and first.claimed == 4 and first.theirs is None
        second = ours.claim(unit)
        assert second.ours is None and second.theirs.runs == ["h1", "h2"] and f"pid {sleeper.pid}" in second.holder
        other.add_many([row("h1", "a"), row("h1", "b")], claims=theirs)  # stored and released together
        third = ours.claim(unit)
        assert third.ours is None and third.theirs.runs == ["h2"]
        sleeper.kill()
        sleeper.wait()
        taken = ours.claim(unit)  # the claimant died: its unfinished pairs are taken over
        assert taken.ours.runs == ["h2"] and taken.claimed == 2 and taken.theirs is None
        assert {r[0] for r in this.conn.execute("SELECT owner FROM claims")} == {ours.token}
        ours.release()
        assert this.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    # a claim from another host binds until it has not been renewed for CLAIM_TIMEOUT_S
    theirs.host = "elsewhere"
    assert theirs.claim(unit).claimed == 2 and ours.claim(unit).ours is None
    this.conn.execute("UPDATE claims SET since = since - ?", (CLAIM_TIMEOUT_S + 1,))
    assert ours.claim(unit).claimed == 2
    # our own pid under another token is a process before this one (pid reused)
    earlier = Claims(other)
    this.conn.execute("UPDATE claims SET owner = ?", (earlier.token,))
    assert ours.claim(unit).claimed == 2
    other.close()
    this.close()


def test_a_full_database_rolls_back_the_batch_and_stays_usable(tmp_path, monkeypatch):
    path = tmp_path / "results.db"
    ResultStore(path).close()
    monkeypatch.setenv("UDCBENCH_MAX_PAGE_COUNT", str(ResultStore(path).conn.execute("PRAGMA page_count")
                                                      .fetchone()[0]))
    store = ResultStore(path)
    added = 0
    with pytest.raises(StoreError, match="is full .*free space and run the same command again — the (\\d+) rows"):
        while True:
            added += store.add_many([dict(row("h", f"{added}-{i}"), attack_params="x" * 200) for i in range(2)])
    assert store.stored_count() == added > 0  # the failed batch of two rolled back whole
    store.close()
    monkeypatch.delenv("UDCBENCH_MAX_PAGE_COUNT")
    store = ResultStore(path)
    assert store.add_many([row("h", "after"), row("h", "after-2")]) == 2
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB file system (tmpfs): root only, skipped where mounting is not allowed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the page cap of the tests above stands in for a full disk")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: also when a failed test left a file open


def test_a_really_full_disk_is_the_same_one_line(tiny_disk):
    from udcbench.report.leaderboard import write_atomic

    (tiny_disk / "other-data").write_bytes(b"\0" * 16384)
    store = ResultStore(tiny_disk / "results.db")
    added = 0
    with pytest.raises(StoreError, match=f"^the disk holding {tiny_disk / 'results.db'} is full .* the (\\d+) rows "
                                         "stored so far are kept$"):
        while True:
            added += store.add_many([dict(row("h", f"{added}-{i}"), attack_params="x" * 500) for i in range(2)])
    assert store.stored_count() == added > 0
    with pytest.raises(OSError) as full:
        write_atomic(tiny_disk / "leaderboard.md", "x" * 65536)
    assert str(store.write_error(full.value, "the leaderboard files")).startswith(
        "the disk holding the leaderboard files is full (No space left on device); free space")
    (tiny_disk / "other-data").unlink()  # free space: the same store goes on
    assert store.add_many([row("h", "after")]) == 1
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()
