"""Claims: two `udcbench run` processes on one --out split the work instead of each computing every row.

Before computing a unit, a process claims the unit's missing (run hash, image) pairs in the `claims` table of
results.db, in one BEGIN IMMEDIATE transaction, so no pair is ever claimed twice. A run's pairs in a unit are
claimed all or none (a batch is computed whole: it draws its random starts once): they are claimable when none
of them is held by a live claimant. A claim records its owner — a random token, the pid, the host — and when
it was made or last renewed. It is stale, and taken over, when its process is gone: on this host its pid is
dead (or is this process's own pid under another token: a process before it), or it was not renewed for
CLAIM_TIMEOUT_S (a claimant on another host, or a pid reused by an unrelated process).

A unit's rows are stored and its claims released in one transaction (`settle`, from ResultStore.add_many); a
process releases whatever it still holds when it ends, and a killed one leaves claims the next run finds stale.
Units held by a live process are left to it: the executor waits for their rows (polling every POLL_S) and takes
a unit over when its claimant dies, so each process ends with every row stored, each computed once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
import uuid

from udcbench.errors import StoreError
from udcbench.runner.plan import Unit

CLAIM_TIMEOUT_S = 6 * 3600.0  # generous: a claim is renewed each time its owner stores a unit
POLL_S = 0.5


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running (a zombie — killed, not yet reaped — is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): os.kill's answer
        return True


@dataclasses.dataclass
class Split:
    """A unit divided by claims: `ours` (the runs this process now holds), `theirs` (runs held by a live
    process), `claimed` (how many pairs this process claimed) and `holder` (who holds theirs, for messages)."""

    ours: Unit | None = None
    theirs: Unit | None = None
    claimed: int = 0
    holder: str = ""


class Claims:
    def __init__(self, store):
        self.store = store
        self.token, self.pid, self.host = uuid.uuid4().hex, os.getpid(), socket.gethostname()

    def live(self, owner: str, pid: int, host: str, since: float, now: float) -> bool:
        """Whether a claim still binds: its owner is this process, or another that is (probably) running."""
        if owner == self.token:
            return True
        if now - since > CLAIM_TIMEOUT_S:
            return False
        if host != self.host:
            return True
        return pid != self.pid and pid_alive(pid)

    def _split(self, conn, unit: Unit, now: float) -> tuple[Split, dict[str, list[str]]]:
        """Which runs of `unit` are left to others, and the missing images of the rest (stored runs drop out)."""
        split, free = Split(), {}
        theirs = []
        marks = ", ".join("?" for _ in unit.names)
        for run in unit.runs:
            stored = {r[0] for r in conn.execute(f"SELECT image FROM results WHERE run_hash = ? AND image IN "
                                                 f"({marks})", (run, *unit.names))}
            missing = [name for name in unit.names if name not in stored]
            if not missing:
                continue
            holders = conn.execute(f"SELECT owner, pid, host, since FROM claims WHERE run_hash = ? AND image IN "
                                   f"({marks})", (run, *missing)).fetchall()
            live = [h for h in holders if h[0] != self.token and self.live(*h, now)]
            if live:
                theirs.append(run)
                split.holder = f"pid {live[0][1]} on {live[0][2]}"
            else:
                free[run] = missing
        split.theirs = dataclasses.replace(unit, runs=theirs) if theirs else None
        return split, free

    def claim(self, unit: Unit) -> Split:
        """Claim what of `unit` is free. A read decides first, so waiting on another process's units never
        takes the write lock; only a unit with something to claim is checked again under it and claimed."""
        split, free = self._split(self.store.conn, unit, time.time())
        if not free:
            return split
        with self.store.transaction() as conn:
            now = time.time()
            split, free = self._split(conn, unit, now)
            conn.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                             [(run, name, self.token, self.pid, self.host, now)
                              for run, names in free.items() for name in names])
        if free:
            split.ours = dataclasses.replace(unit, runs=[run for run in unit.runs if run in free])
            split.claimed = sum(len(names) for names in free.values())
        return split

    def settle(self, conn, rows: list[dict]) -> None:
        """In the transaction storing `rows`: release their claims and renew this process's others."""
        conn.executemany("DELETE FROM claims WHERE run_hash = ? AND image = ? AND owner = ?",
                         [(row["run_hash"], row["image"], self.token) for row in rows])
        conn.execute("UPDATE claims SET since = ? WHERE owner = ?", (time.time(), self.token))

    def release(self) -> None:
        """Drop every claim this process still holds (when it ends, finished or not). A failure is left alone:
        claims of a process that has ended are stale anyway."""
        with contextlib.suppress(StoreError):
            with self.store.transaction() as conn:
                conn.execute("DELETE FROM claims WHERE owner = ?", (self.token,))
