"""Progress of long commands (`run`, `plot`, the training commands): a rich bar on a terminal, plain lines in
logs, and an ETA from this command's own pace.

The ETA is the mean time per unit finished by this command times the units left (elapsed / done × remaining),
shown as soon as one unit has finished and counting down between updates — unlike rich's TimeRemainingColumn,
which estimates from a short window of recent speed and shows -:--:-- once updates are rarer than that (an
image that takes a minute to attack). Units that were already done when the command started (a resumed run)
are not counted as finished by it.

Where stdout is not a terminal (CI logs, `| tee`, nohup, tests), a plain line such as
`progress: 12/32 images (37%), 4m10s elapsed, ETA 7m05s, img_03` is printed for the first update, for the
last (all done), and in between at most once every UDCBENCH_PROGRESS_INTERVAL seconds (default 30; 0: every
update). The lines go to stdout, like the bar and the rest of a command's report: stderr stays reserved for
the one `error:` or `interrupted:` line a command may end with.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from udcbench.errors import UdcbenchError

INTERVAL_ENV = "UDCBENCH_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def progress_interval() -> float:
    """Seconds between two plain progress lines: UDCBENCH_PROGRESS_INTERVAL, else 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UdcbenchError(f"{INTERVAL_ENV}={text!r} is not a number of seconds ≥ 0; set it to e.g. 30 (a "
                            "progress line at most every 30 s in logs) or 0 (one per update), or unset it")
    return value


def format_duration(seconds: float) -> str:
    """42s, 4m10s, 1h02m (rounded down to what is shown)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Pace:
    """Elapsed time and ETA of one long loop from its updates (done, total). The clock starts at the first
    update; what was done then (resumed work) does not count as finished by this loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started: float | None = None
        self.baseline = self.done = self.total = 0
        self.stamp = 0.0
        self.estimate: float | None = None  # seconds left, as estimated at `stamp`

    def update(self, done: int, total: int) -> None:
        now = self.clock()
        if self.started is None:
            self.started, self.baseline = now, done
        self.baseline = min(self.baseline, done)
        self.done, self.total, self.stamp = done, total, now
        finished = done - self.baseline
        self.estimate = (now - self.started) / finished * max(0, total - done) if finished > 0 else None

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def eta(self) -> float | None:
        """Seconds left: the last estimate, counted down since it was made; None before a unit has finished."""
        if self.estimate is None:
            return None
        return max(0.0, self.estimate - (self.clock() - self.stamp))


class EtaColumn(ProgressColumn):
    """`ETA 7m05s` from a Pace (rich asks for it at every refresh, so it counts down between updates)."""

    def __init__(self, pace: Pace):
        super().__init__()
        self.pace = pace

    def render(self, task) -> Text:
        if task.finished:
            return Text("")
        eta = self.pace.eta()
        return Text("ETA …" if eta is None else f"ETA {format_duration(eta)}", style="progress.remaining")


def plain_line(pace: Pace, unit: str, note: str) -> str:
    """`progress: 12/32 images (37%), 4m10s elapsed, ETA 7m05s, NOTE`."""
    done, total = pace.done, pace.total
    share = f" ({100 * done // total}%)" if total else ""
    parts = [f"progress: {done}/{total} {unit}{share}", f"{format_duration(pace.elapsed())} elapsed"]
    eta = pace.eta()
    if done >= total:
        parts.append("done")
    elif eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    if note:
        parts.append(note)
    return ", ".join(parts)


class Reporter:
    """`with Reporter(console, "attacking", "images") as progress:` — progress(done, total, note) shows a rich
    bar when the console is a terminal, else plain lines (first, last, and at most one every `interval` s)."""

    def __init__(self, console: Console, description: str, unit: str = "images", interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, total: int | None = None):
        self.console, self.description, self.unit, self.total = console, description, unit, total
        self.interval = progress_interval() if interval is None else interval
        self.clock, self.pace = clock, Pace(clock)
        self.bar: Progress | None = None
        self.task = None
        self.printed: tuple[int, str] | None = None  # (done, note) of the last plain line
        self.printed_at = 0.0

    def __enter__(self) -> Reporter:
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), EtaColumn(self.pace),
                                TextColumn("{task.fields[note]}"), console=self.console, transient=False,
                                get_time=self.clock)
            self.task = self.bar.add_task(self.description, total=self.total, note="")
            self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False

    def __call__(self, done: int, total: int, note: str = "") -> None:
        self.pace.update(done, total)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, note=escape(note))
        elif self.due(done, total, note):
            self.printed, self.printed_at = (done, note), self.clock()
            self.console.print(plain_line(self.pace, self.unit, note), markup=False, highlight=False,
                               soft_wrap=True)
            self.console.file.flush()

    def due(self, done: int, total: int, note: str) -> bool:
        """First update; all done (once); else something changed and `interval` s passed since the last line."""
        if self.printed is None:
            return True
        if done >= total:
            return self.printed[0] < total
        return (done, note) != self.printed and self.clock() - self.printed_at >= self.interval


def track(items: list, console: Console, description: str, unit: str, note: Callable[[object], str] = str):
    """`for item in track(items, console, "replaying", "runs"):` — a Reporter around a loop: an update before
    the first item and after each one (noted by `note(item)`); the bar closes however the loop ends."""
    reporter = Reporter(console, description, unit)  # a bad UDCBENCH_PROGRESS_INTERVAL is refused here

    def tracked():
        with reporter as progress:
            progress(0, len(items), "")
            for index, item in enumerate(items):
                yield item
                progress(index + 1, len(items), note(item))

    return tracked()
