"""Output paths checked before any work: a command that would fail to write its result after minutes of
computing (a read-only folder, a path through a file) refuses up front in one line, with nothing created.

`check_folder` is for outputs that are folders (`run --out`, `plot --out`, `synth --out`); `check_file` for those
that are files (`train --out W.safetensors`, `psf --out P.png`, `leaderboard --out T.md`). Both accept a path
whose missing parent folders can be created, and check the nearest existing one for write permission."""

from __future__ import annotations

import os
from pathlib import Path

from udcbench.errors import SpecError


def _nearest_existing(path: Path) -> Path:
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _writable(start: Path, path: Path, flag: str) -> None:
    """The nearest existing folder at or above `start` is a folder this process can write into."""
    folder = _nearest_existing(start)
    if not folder.is_dir():
        raise SpecError(f"cannot create {flag} {path}: {folder} is a file, not a folder; choose another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"cannot create {flag} {path}: the folder {folder} is not writable; choose another {flag}")


def check_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` is, or can be made, a folder this process can write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpecError(f"{flag} {path} is a file; pass a folder")
    _writable(path, path, flag)
    return path


def check_file(path: str | Path, flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """`path` names a file (not a folder) that this process can create or replace, with one of `suffixes`."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{flag} {path} is a folder; name a file inside it, e.g. {flag} "
                        f"{path / ('out' + (suffixes[0] if suffixes else ''))}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise SpecError(f"{flag} {path} must end in {' or '.join(suffixes)}; e.g. {flag} "
                        f"{path.with_suffix(suffixes[0]).name}")
    _writable(path.parent, path, flag)
    return path
