"""The results store: SQLite, one row per (run hash, image); the rows of one batch go in one transaction.

The columns are COLUMNS (those of the built-in metrics included, in their historical order) plus one REAL column
per (metric, pair) of any further metric a run scored (`grad_gap_adv_gt`), added when its first row arrives; a
row leaves the metric columns it did not score NULL.

A killed run leaves only whole rows behind; rerunning the same spec skips the images already stored, and the
primary key makes a doubled row impossible. Leaderboards are always recomputed from these rows.
"""

from __future__ import annotations

import json
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


class ResultStore:
    """Open (or create) `results.db` at `path`; `path=None` keeps everything in memory."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        try:
            self.conn = sqlite3.connect(":memory:" if path is None else str(path))
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS)
            with self.conn:
                self.conn.execute(f"CREATE TABLE IF NOT EXISTS results ({columns}, PRIMARY KEY (run_hash, image))")
                self.conn.execute("CREATE TABLE IF NOT EXISTS runs (run_hash TEXT PRIMARY KEY, spec TEXT NOT NULL)")
            found = [row[1] for row in self.conn.execute("PRAGMA table_info(results)")]
        except sqlite3.DatabaseError as error:
            raise StoreError(f"cannot use results database {path}: {error}; move it away or pick another --out")
        missing = [(name, kind) for name, kind in COLUMNS if name not in found]
        self.extra = [name for name in found if name not in COLUMN_NAMES]  # further metrics' columns
        if not all(map(is_metric_column, self.extra)) or any(name in ("run_hash", "image") for name, _ in missing):
            raise StoreError(f"{path} was written by an incompatible udcbench version (columns differ); "
                             "pick a new --out folder")
        with self.conn:  # a store from an older udcbench gains the new columns (NULL in its old rows)
            for name, kind in missing:
                self.conn.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")

    @property
    def columns(self) -> list[str]:
        return list(COLUMN_NAMES) + self.extra

    def _add_metric_columns(self, rows: list[dict]) -> None:
        """Columns for metrics this store has not seen yet (in the caller's transaction)."""
        for row in rows:
            for name in row:
                if name not in COLUMN_NAMES and name not in self.extra:
                    if not is_metric_column(name):
                        raise StoreError(f"internal error: result row has the unknown column {name!r}")
                    self.conn.execute(f"ALTER TABLE results ADD COLUMN {name} REAL")
                    self.extra.append(name)

    def register_run(self, run_hash: str, spec: dict) -> None:
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO runs VALUES (?, ?)",
                              (run_hash, json.dumps(spec, sort_keys=True, default=str)))

    def done(self, run_hash: str) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT image FROM results WHERE run_hash = ?", (run_hash,))}

    def add(self, row: dict) -> bool:
        """Insert one row in its own transaction; False if that (run hash, image) is already stored."""
        return self.add_many([row]) == 1

    def add_many(self, rows: list[dict]) -> int:
        """Insert rows in one transaction (all or none); returns how many were new. Metric columns a row lacks
        stay NULL (a metric the run did not score); any other missing column is an internal error."""
        for row in rows:
            missing = [name for name in COLUMN_NAMES if name not in row and not is_metric_column(name)]
            if missing:
                raise StoreError(f"internal error: result row lacks {sorted(missing)}")
        with self.conn:
            self._add_metric_columns(rows)
            columns = self.columns
            marks = ", ".join("?" for _ in columns)
            before = self.conn.total_changes
            self.conn.executemany(f"INSERT OR IGNORE INTO results ({', '.join(columns)}) VALUES ({marks})",
                                  [[row.get(name) for name in columns] for row in rows])
            return self.conn.total_changes - before

    def rows(self, run_hash: str | None = None) -> pd.DataFrame:
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
        return frame

    def close(self) -> None:
        self.conn.close()


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
    if not path.is_file():
        raise StoreError(f"{out_dir} holds no results.db; pass the --out folder of a `udcbench run`")
    return ResultStore(path)
