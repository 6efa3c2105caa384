"""Progress of long commands (udcbench/cli/progress.py): the ETA from this command's own pace, plain lines in
logs at most every UDCBENCH_PROGRESS_INTERVAL seconds (first and last always), a rich bar on a terminal. The
estimator and the lines are checked with a fake clock; one real `udcbench run` on three 32-px images checks
the wiring (lines on stdout, nothing on stderr, nothing in the files)."""

import io

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from rich.progress import TimeRemainingColumn
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.cli.progress import INTERVAL_ENV, EtaColumn, Pace, Reporter, format_duration, progress_interval, track
from udcbench.errors import UdcbenchError


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def plain(interval: float, clock: Clock, unit: str = "images"):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    return Reporter(console, "attacking", unit, interval=interval, clock=clock), out


def test_durations_read_as_seconds_minutes_and_hours():
    assert [format_duration(s) for s in (0, 9.9, 59, 60, 250, 425, 3599, 3600, 3725, 90061)] == \
        ["0s", "9s", "59s", "1m00s", "4m10s", "7m05s", "59m59s", "1h00m", "1h02m", "25h01m"]


def test_the_eta_is_the_mean_time_per_finished_unit_times_the_units_left():
    clock = Clock()
    pace = Pace(clock)
    pace.update(0, 32)
    assert pace.eta() is None  # nothing finished yet: no estimate
    for done, at in ((1, 45.0), (2, 95.0), (5, 260.0)):  # units of about a minute each: rich gives up on these
        clock.now = 1000.0 + at
        pace.update(done, 32)
        assert pace.eta() == pytest.approx(at / done * (32 - done))
    clock.now += 20  # between updates the estimate counts down
    assert pace.eta() == pytest.approx(260.0 / 5 * 27 - 20)
    assert pace.elapsed() == pytest.approx(280.0)
    clock.now += 10_000
    assert pace.eta() == 0.0


def test_work_done_before_the_command_started_is_not_counted_as_finished_by_it():
    clock = Clock()
    pace = Pace(clock)
    pace.update(24, 32)  # a resumed run: 24 rows stored by an earlier command
    clock.now += 100
    pace.update(26, 32)
    assert pace.eta() == pytest.approx(100 / 2 * 6)  # 50 s per unit of this command, not 100/26


def test_plain_lines_come_at_most_once_per_interval_first_and_last_always():
    clock = Clock()
    reporter, out = plain(30, clock)
    with reporter as progress:
        for done, at in [(0, 0), (1, 10), (2, 20), (3, 35), (4, 50), (5, 64), (6, 66), (8, 70)]:
            clock.now = 1000.0 + at
            progress(done, 8, f"img{done}")
    lines = out.getvalue().splitlines()
    assert lines == [
        "progress: 0/8 images (0%), 0s elapsed, img0",
        f"progress: 3/8 images (37%), 35s elapsed, ETA {format_duration(35 / 3 * 5)}, img3",
        f"progress: 6/8 images (75%), 1m06s elapsed, ETA {format_duration(66 / 6 * 2)}, img6",  # 64 - 35 < 30
        "progress: 8/8 images (100%), 1m10s elapsed, done, img8",
    ]


def test_interval_zero_prints_every_change_and_the_last_line_once(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    clock = Clock()
    out = io.StringIO()
    with Reporter(Console(file=out, force_terminal=False), "running", "rows", clock=clock) as progress:
        for done in (0, 1, 1, 2, 2):  # a repeated update (same done, same note) is no news
            clock.now += 60
            progress(done, 2, "")
        progress(2, 2, "")  # after waiting for another process: all done again, already said
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["progress: 0/2 rows (0%)", "progress: 1/2 rows (50%)",
                                                      "progress: 2/2 rows (100%)"]
    assert "ETA 1m00s" in lines[1]


@pytest.mark.parametrize("text, expected", [("", 30.0), ("0", 0.0), (" 2.5 ", 2.5), ("120", 120.0)])
def test_the_interval_comes_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(INTERVAL_ENV, text)
    assert progress_interval() == expected


@pytest.mark.parametrize("text", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_is_refused_with_the_fix(monkeypatch, text):
    monkeypatch.setenv(INTERVAL_ENV, text)
    with pytest.raises(UdcbenchError, match=f"{INTERVAL_ENV}=.* e.g. 30"):
        Reporter(Console(file=io.StringIO()), "running")


def test_the_terminal_bar_shows_an_eta_where_rich_shows_none():
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    reporter = Reporter(console, "attacking", interval=30, clock=clock)
    with reporter as progress:
        progress(0, 32, "")
        for done in (1, 2):
            clock.now += 75.0  # 75 s per image: longer than rich's 30 s speed window
            progress(done, 32, f"img{done}")
        task = reporter.bar.tasks[0]
        assert str(TimeRemainingColumn().render(task)) == "-:--:--"  # the estimate this module replaces
        assert str(EtaColumn(reporter.pace).render(task)) == f"ETA {format_duration(75.0 * 30)}"
        clock.now += 30.0
        assert str(EtaColumn(reporter.pace).render(task)) == f"ETA {format_duration(75.0 * 30 - 30)}"
    assert "progress:" not in out.getvalue()  # a terminal gets the bar, not the log lines
    assert "ETA 37m" in out.getvalue()


def test_track_reports_before_the_first_item_and_after_each(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    out = io.StringIO()
    seen = list(track(["a", "b"], Console(file=out, force_terminal=False), "replaying", "runs", str.upper))
    assert seen == ["a", "b"]
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["progress: 0/2 runs (0%)", "progress: 1/2 runs (50%)",
                                                      "progress: 2/2 runs (100%)"]
    assert lines[1].endswith(", A") and lines[2].endswith(", B")


@pytest.fixture
def tiny_pairs(tmp_path):
    """mipi:ROOT with three 32-px test pairs and a psf.npy in the old (3, k, k) layout (Wiener needs it)."""
    root = tmp_path / "mipi"
    rng = np.random.default_rng(0)
    for i in range(3):
        for part in ("input", "GT"):
            (root / "test" / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "test" / part / f"{i}.png")
    np.save(root / "psf.npy", np.full((3, 5, 5), 1 / 25, np.float32))
    return root


def test_a_run_in_a_log_prints_progress_lines_on_stdout_and_nowhere_else(tiny_pairs, tmp_path, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", "wiener", "--attack", "fgsm", "--data", f"mipi:{tiny_pairs}",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("progress:")]
    assert [line.split(",")[0] for line in lines] == [f"progress: {i}/3 images ({100 * i // 3}%)" for i in range(4)]
    assert all("ETA " in line for line in lines[1:3]) and lines[3].endswith("done, 2")
    assert result.stderr == ""
    assert not any("progress" in p.read_text() for p in out.iterdir() if p.suffix in (".md", ".csv"))


def test_a_bad_interval_stops_a_run_before_anything_is_loaded_or_written(tmp_path, monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    result = CliRunner().invoke(app, ["run", "--limit", "1", "--out", str(tmp_path / "never")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {INTERVAL_ENV}="), lines
    assert not (tmp_path / "never").exists()
