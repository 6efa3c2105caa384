"""The results store: SQLite, one row per (run hash, image); the rows of one batch go in one transaction.

The columns are COLUMNS (those of the built-in metrics included, in their historical order) plus one REAL column
per (metric, pair) of any further metric a run scored (`grad_gap_adv_gt`), added when its first row arrives; a
row leaves the metric columns it did not score NULL.

A killed run leaves only whole rows behind; rerunning the same spec skips the images already stored, and the
primary key makes a doubled row impossible. Leaderboards are always recomputed from these rows.

Every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock up front, waiting up to BUSY_TIMEOUT_S
for another process's (two runs may share one --out; see claims.py, whose `claims` table lives here too), and
rolls back whole on any error — a full disk, Ctrl-C or SIGTERM included. SQLite's errors become one StoreError
line that names the file, the problem and the fix. A new results.db appears whole (built beside its name, then
linked there), so a 0-byte or foreign results.db is never one of ours and is refused before anything touches it
(`check_file`): SQLite would take a 0-byte file for an empty database and the leaderboards would be overwritten
with empty ones.

Testing hook: the environment variable UDCBENCH_MAX_PAGE_COUNT caps the database at that many pages
(`PRAGMA max_page_count`), so tests can fill the "disk" at a chosen size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
from pathlib import Path

import pandas as pd

from udcbench.errors import StoreError
from udcbench.metrics.base import is_metric_column
from udcbench.spec import describe_settings

# (column, SQL type) — the order is the CSV / DataFrame column order
COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_hash", "TEXT NOT NULL"), ("image", "TEXT NOT NULL"),
    ("model", "TEXT"), ("weights", "TEXT"), ("defense", "TEXT"), ("threat", "TEXT"),
    ("defense_params", "TEXT"), ("eot", "INTEGER"),
    ("attack", "TEXT"), ("objective", "TEXT"), ("norm", "TEXT"), ("eps", "REAL"), ("alpha", "REAL"),
    ("steps", "INTEGER"), ("mask", "TEXT"),
    ("attack_params", "TEXT"), ("data", "TEXT"), ("split", "TEXT"), ("seed", "INTEGER"),
    ("psnr_degraded_gt", "REAL"),
    ("psnr_clean_gt", "REAL"), ("ssim_clean_gt", "REAL"),
    ("psnr_adv_gt", "REAL"), ("ssim_adv_gt", "REAL"),
    ("psnr_adv_clean", "REAL"), ("ssim_adv_clean", "REAL"),
    # the same clean / adversarial inputs through the bare model (equal to the above for defense none)
    ("psnr_clean_gt_undefended", "REAL"), ("ssim_clean_gt_undefended", "REAL"),
    ("psnr_adv_gt_undefended", "REAL"), ("ssim_adv_gt_undefended", "REAL"),
    ("psnr_input_adv", "REAL"), ("linf", "REAL"), ("l2", "REAL"), ("queries", "INTEGER"),
    ("lpips_clean_gt", "REAL"), ("lpips_adv_gt", "REAL"), ("lpips_adv_clean", "REAL"),
    ("objective_clean", "REAL"), ("objective_adv", "REAL"),
    ("time_clean_s", "REAL"), ("time_attack_s", "REAL"), ("time_eval_s", "REAL"),
    ("device", "TEXT"), ("batch_size", "INTEGER"), ("precision", "TEXT"), ("udcbench_version", "TEXT"),
    ("torch_version", "TEXT"), ("created_at", "TEXT"),
    # what separates runs besides the columns above (added in 0.2; NULL in rows of older versions)
    ("attack_settings", "TEXT"), ("weights_digest", "TEXT"), ("model_options", "TEXT"), ("scoring", "TEXT"),
    ("iterations", "INTEGER"), ("eps_batch", "INTEGER"), ("backend", "TEXT"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
TABLES = {  # name -> CREATE statement
    "results": f"CREATE TABLE IF NOT EXISTS results ({', '.join(f'{n} {k}' for n, k in COLUMNS)}, "
               "PRIMARY KEY (run_hash, image))",
    "runs": "CREATE TABLE IF NOT EXISTS runs (run_hash TEXT PRIMARY KEY, spec TEXT NOT NULL)",
    # (run, image) pairs a process is computing now (claims.py)
    "claims": "CREATE TABLE IF NOT EXISTS claims (run_hash TEXT NOT NULL, image TEXT NOT NULL, owner TEXT NOT NULL, "
              "pid INTEGER NOT NULL, host TEXT NOT NULL, since REAL NOT NULL, PRIMARY KEY (run_hash, image))",
}
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's transaction before giving up
SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_FULL = 5, 6, 13  # SQLite's result codes (sqlite3 names them from Python 3.11)


class ResultStore:
    """Open (or create) `results.db` at `path`; `path=None` keeps everything in memory. `create=False` refuses a
    database without a results table instead of adding one (a file that is not a udcbench store)."""

    def __init__(self, path: str | Path | None, create: bool = True):
        self.path = None if path is None else Path(path)
        try:
            if self.path is not None and create and not self.path.exists():
                create_whole(self.path)
            self.conn = sqlite3.connect(":memory:" if path is None else str(path), timeout=BUSY_TIMEOUT_S,
                                        isolation_level=None)  # transactions are explicit (`transaction`)
            if os.environ.get("UDCBENCH_MAX_PAGE_COUNT"):  # testing hook: a "disk" of this many pages
                self.conn.execute(f"PRAGMA max_page_count = {int(os.environ['UDCBENCH_MAX_PAGE_COUNT'])}")
            tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not create and "results" not in tables:
                raise StoreError(f"{path} is a SQLite database but holds no udcbench results; pass the --out folder "
                                 "of a udcbench run")
            for name in [name for name in TABLES if name not in tables and (create or name != "claims")]:
                self.conn.execute(TABLES[name])  # (a store opened only to read, of this version, stays as it is)
            found = [row[1] for row in self.conn.execute("PRAGMA table_info(results)")]
        except sqlite3.DatabaseError as error:
            if disk_full(error):
                raise StoreError(f"the disk holding {path} is full ({error}); free space and run the same command "
                                 "again") from None
            raise StoreError(f"cannot use results database {path}: {error}; move it away or pick another --out")
        missing = [(name, kind) for name, kind in COLUMNS if name not in found]
        self.extra = [name for name in found if name not in COLUMN_NAMES]  # further metrics' columns
        if not all(map(is_metric_column, self.extra)) or any(name in ("run_hash", "image") for name, _ in missing):
            raise StoreError(f"{path} was written by an incompatible udcbench version (columns differ); "
                             "pick a new --out folder")
        if missing:  # a store from an older udcbench gains the new columns (NULL in its old rows)
            with self.transaction() as conn:  # (unless a run opening it at the same moment was first)
                found = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
                for name, kind in missing:
                    if name not in found:
                        conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")

    @property
    def columns(self) -> list[str]:
        return list(COLUMN_NAMES) + self.extra

    @property
    def where(self) -> str:
        return "the results in memory" if self.path is None else str(self.path)

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE … COMMIT. Anything raised inside — a SQLite error, KeyboardInterrupt, SIGTERM made one
        by the CLI — rolls the whole transaction back; SQLite's errors leave as one StoreError."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # SQLite may already have rolled back (a full disk does)
                    with contextlib.suppress(sqlite3.Error):
                        self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise self.write_error(error) from None

    def stored_count(self) -> int | None:
        with contextlib.suppress(sqlite3.Error):
            return self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return None

    def write_error(self, error: Exception, what: str | None = None) -> StoreError:
        """One line for a failed write of `what` (the database by default): full disk, lock or anything else."""
        what = what or self.where
        count = self.stored_count()
        kept = "" if count is None or self.path is None else f" — the {count} rows stored so far are kept"
        detail = getattr(error, "strerror", None) or str(error)
        if disk_full(error):
            return StoreError(f"the disk holding {what} is full ({detail}); free space and run the same command "
                              f"again{kept}")
        if getattr(error, "sqlite_errorcode", None) in (SQLITE_BUSY, SQLITE_LOCKED) or "locked" in str(error):
            return StoreError(f"{what} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s ({detail}); let "
                              f"the other udcbench finish, then run the same command again{kept}")
        return StoreError(f"cannot write {what} ({detail}); check the disk and the file's permissions, then run "
                          f"the same command again{kept}")

    def _refresh_columns(self) -> None:
        """Metric columns another process may have added since this store was opened."""
        found = [row[1] for row in self.conn.execute("PRAGMA table_info(results)")]
        self.extra = [name for name in found if name not in COLUMN_NAMES]

    def _add_metric_columns(self, rows: list[dict]) -> None:
        """Columns for metrics this store has not seen yet (in the caller's transaction)."""
        if any(name not in COLUMN_NAMES and name not in self.extra for row in rows for name in row):
            self._refresh_columns()
        for row in rows:
            for name in row:
                if name not in COLUMN_NAMES and name not in self.extra:
                    if not is_metric_column(name):
                        raise StoreError(f"internal error: result row has the unknown column {name!r}")
                    self.conn.execute(f"ALTER TABLE results ADD COLUMN {name} REAL")
                    self.extra.append(name)

    def register_run(self, run_hash: str, spec: dict) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO runs VALUES (?, ?)",
                         (run_hash, json.dumps(spec, sort_keys=True, default=str)))

    def done(self, run_hash: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT image FROM results WHERE run_hash = ?", (run_hash,))}

    def add(self, row: dict) -> bool:
        """Insert one row in its own transaction; False if that (run hash, image) is already stored."""
        return self.add_many([row]) == 1

    def add_many(self, rows: list[dict], claims=None) -> int:
        """Insert rows in one transaction (all or none); returns how many were new. Metric columns a row lacks
        stay NULL (a metric the run did not score); any other missing column is an internal error. `claims`
        (claims.Claims) releases its claims on these rows in the same transaction."""
        for row in rows:
            missing = [name for name in COLUMN_NAMES if name not in row and not is_metric_column(name)]
            if missing:
                raise StoreError(f"internal error: result row lacks {sorted(missing)}")
        with self.transaction() as conn:
            self._add_metric_columns(rows)
            columns = self.columns
            marks = ", ".join("?" for _ in columns)
            before = conn.total_changes
            conn.executemany(f"INSERT OR IGNORE INTO results ({', '.join(columns)}) VALUES ({marks})",
                             [[row.get(name) for name in columns] for row in rows])
            added = conn.total_changes - before
            if claims is not None:
                claims.settle(conn, rows)
            return added

    def rows(self, run_hash: str | None = None) -> pd.DataFrame:
        try:
            self._refresh_columns()
            query = f"SELECT {', '.join(self.columns)} FROM results"
            args: tuple = ()
            if run_hash is not None:
                query, args = query + " WHERE run_hash = ?", (run_hash,)
            frame = pd.read_sql_query(query + " ORDER BY run_hash, image", self.conn, params=args)
            older = frame["attack_settings"].isna()
            if older.any():  # rows of older versions: the settings the user gave are in the run's stored spec
                specs = dict(self.conn.execute("SELECT run_hash, spec FROM runs"))
                frame.loc[older, "attack_settings"] = [stored_settings(specs[h]) if h in specs else None
                                                       for h in frame.loc[older, "run_hash"]]
        except (sqlite3.Error, pd.errors.DatabaseError) as error:
            raise StoreError(f"cannot read {self.where} ({error}); check the disk, or move the file away and run "
                             "again") from None
        return frame

    def close(self) -> None:
        self.conn.close()


def disk_full(error: Exception) -> bool:
    """SQLite's SQLITE_FULL (a full disk, or the page cap of the testing hook) or the OS's ENOSPC."""
    return (getattr(error, "sqlite_errorcode", None) == SQLITE_FULL or getattr(error, "errno", None) == errno.ENOSPC
            or "disk is full" in str(error))


def create_whole(path: Path) -> None:
    """Create the database at `path` with its tables, atomically: built beside it, then hard-linked to `path`
    (which fails harmlessly when another process got there first). SQLite itself creates a 0-byte file first,
    which a run starting at that moment would refuse (`check_file`). Where hard links are not supported, SQLite
    creates the file in place as before."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            for statement in TABLES.values():
                conn.execute(statement)
        finally:
            conn.close()
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise StoreError(f"the disk holding {path} is full ({error.strerror}); free space and run the same "
                             "command again") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_file(path: Path) -> None:
    """Refuse a results.db that cannot be a udcbench store — a folder, a 0-byte file, a file that is not SQLite —
    before anything reads or writes it. A missing file is fine (a run creates it)."""
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path} is a folder, not a results database; move it away or pass another --out folder")
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as error:
        raise StoreError(f"cannot read {path} ({error.strerror}); check its permissions") from None
    if not head:
        raise StoreError(f"{path} is empty (0 bytes), not the results of a run; delete it or pass the --out folder "
                         "of a udcbench run")
    if head != SQLITE_HEADER:
        raise StoreError(f"{path} is not a SQLite database (it starts with {head[:8]!r}), not the results of a run; "
                         "move it away or pass the --out folder of a udcbench run")


def stored_settings(spec_json: str) -> str | None:
    """The attack-settings label of a run from its stored spec (the `runs` table), for rows of older versions."""
    try:
        spec = json.loads(spec_json)["spec"]
        return describe_settings(dict(tuple(pair) for pair in spec["attack"]["params"]))
    except (ValueError, KeyError, TypeError):
        return None


def open_existing(out_dir: str | Path) -> ResultStore:
    """The store of a finished or interrupted run folder (for `udcbench leaderboard DIR`)."""
    path = Path(out_dir) / "results.db"
    if not path.exists():
        raise StoreError(f"{out_dir} holds no results.db; pass the --out folder of a `udcbench run`")
    check_file(path)
    return ResultStore(path, create=False)
