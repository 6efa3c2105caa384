"""What every command module shares: the consoles, the one place a UdcbenchError becomes a red line and exit code
2, and small helpers for options (attack parameters, --norm) and for training commands (command line, progress)."""

from __future__ import annotations

import errno
import functools
import shlex
import sys

import typer
from rich.console import Console
from rich.markup import escape

from udcbench.errors import UdcbenchError

# piped or captured output gets a wide fixed width so tables stay readable in logs (rich would use 80)
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)


def fail(error: Exception) -> None:
    errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# what to do about an OSError, by errno (anything else: "check the path")
OS_FIXES = {
    errno.ENOSPC: "free disk space and run the same command again",
    errno.EDQUOT: "free disk space (or raise your quota) and run the same command again",
    errno.EACCES: "pick a path you can write to, or fix its permissions",
    errno.EPERM: "pick a path you can write to, or fix its permissions",
    errno.EROFS: "the file system is read-only; pick a path on a writable one",
    errno.ENOTDIR: "a part of the path is a file, not a folder; pick another path",
    errno.EEXIST: "something else already has that name; pick another path",
    errno.EISDIR: "it is a folder; pass a file name",
    errno.ENAMETOOLONG: "pick a shorter path",
}


def os_error_line(error: OSError) -> str:
    """An OSError (a folder that cannot be created, a full disk, a read-only file system) as one line that names
    the path and the fix."""
    where = f"{error.filename}: " if error.filename else ""
    what = error.strerror or str(error)
    return f"{where}{what.rstrip('.')}; {OS_FIXES.get(error.errno, 'check the path and its permissions')}"


def reports_errors(command):
    """Wrap a command so that a UdcbenchError it raises is one red line on stderr and exit code 2 (`fail`), and
    so is an OSError (an output path that cannot be written, a full disk): these are the user's to fix. Other
    exceptions are bugs and keep their traceback. functools.wraps keeps the signature and docstring Typer reads
    options and help from."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UdcbenchError as error:
            fail(error)
        except OSError as error:
            if error.errno is None:  # an OSError without a path or code is not about the user's files
                raise
            fail(UdcbenchError(os_error_line(error)))

    return wrapper


def invoked_command() -> str:
    """The command line as typed (shell-quoted), recorded in the headers of the weights a command writes."""
    return "udcbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def step_logger(steps: int, timed: bool = False):
    """progress(step, loss) for training loops: one plain line every 5 % of `steps` (and the last), with the
    ETA from the mean time per step so far (cli/progress.py)."""
    import time

    from udcbench.cli.progress import Pace, format_duration

    every, started, pace = max(1, steps // 20), time.time(), Pace()  # its clock starts at the first step's end

    def log(step: int, loss: float) -> None:
        pace.update(step, steps)
        if step % every == 0 or step == steps:
            elapsed = f" ({time.time() - started:.0f} s)" if timed else ""
            eta = f", ETA {format_duration(pace.eta())}" if step < steps and pace.eta() is not None else ""
            console.print(f"step {step}/{steps} loss {loss:.4f}{elapsed}{eta}", highlight=False)

    return log


def parse_attack_params(items: list[str]) -> dict:
    """`KEY=VALUE` strings -> typed values: fractions (2/255) stay text for the attack to parse; ints, floats,
    true/false and none are converted; anything else is a string."""
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UdcbenchError(f"cannot read --attack-param {item!r}; write KEY=VALUE, e.g. -p basis=dct")
        text = text.strip()
        lowered = text.lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered == "none":
            value = None
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        params[key.strip().replace("-", "_")] = value
    return params


def attack_variant(name: str, norm: str | None) -> str:
    """--norm picks the L∞ or L2 variant of an attack: pgd + l2 -> pgd-l2, square-l2 + linf -> square."""
    from udcbench.registry import ATTACKS

    if norm is None:
        return name
    norm = norm.lower().replace("∞", "inf")
    if norm not in ("linf", "l2"):
        raise UdcbenchError(f"unknown --norm {norm!r}; use linf or l2")
    entry = ATTACKS.get(name)
    if entry.info.get("norm") in (norm, "base's"):
        return name
    base = name[:-3] if name.endswith("-l2") else name
    candidate = base if norm == "linf" else f"{base}-l2"
    if candidate in ATTACKS.names():
        return candidate
    raise UdcbenchError(f"attack {name!r} has no {norm} variant; attacks with one: "
                        f"{', '.join(e.name for e in ATTACKS.entries() if e.info.get('norm') == norm)}")
