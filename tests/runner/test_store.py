import sqlite3

import pytest

from udcbench.errors import StoreError
from udcbench.runner.store import COLUMN_NAMES, ResultStore


def row(image, value=1.0):
    data = {name: None for name in COLUMN_NAMES}
    data.update(run_hash="h", image=image, psnr_adv_gt=value)
    return data


def test_rows_are_unique_per_run_and_image(tmp_path):
    store = ResultStore(tmp_path / "results.db")
    assert store.add(row("a", 1.0))
    assert not store.add(row("a", 2.0))  # never doubled, never overwritten
    assert store.add(row("b"))
    assert store.done("h") == {"a", "b"}
    frame = store.rows("h")
    assert list(frame["image"]) == ["a", "b"] and frame["psnr_adv_gt"].iloc[0] == 1.0
    store.close()


def test_store_survives_reopen_and_rejects_foreign_databases(tmp_path):
    path = tmp_path / "results.db"
    store = ResultStore(path)
    store.add(row("a"))
    store.close()
    assert ResultStore(path).done("h") == {"a"}
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE results (x TEXT)")
    with pytest.raises(StoreError, match="incompatible"):
        ResultStore(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        ResultStore(junk)


def test_incomplete_row_is_refused(tmp_path):
    store = ResultStore(None)
    with pytest.raises(StoreError):
        store.add({"run_hash": "h", "image": "a"})
    assert store.done("h") == set()
