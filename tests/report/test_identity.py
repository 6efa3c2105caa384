"""A leaderboard row is exactly one experiment: runs that differ in any setting that changes a number, written
into one folder, stay apart in the leaderboard, pivots, plots and `udcbench check` — and rows written by an
older udcbench still render."""

import shutil
import sqlite3

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from udcbench import api
from udcbench.errors import SpecError
from udcbench.models import bundled_weights
from udcbench.report import check, leaderboard, plots, tables
from udcbench.report.identity import KEYS, RUN, shown_columns
from udcbench.runner.store import COLUMN_NAMES, ResultStore, open_existing
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

MINI = "udcbench/data/udc_mini/test"
IMAGE = "astronaut_00.png"


def _folder(root, splits=("test",)):
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / MINI
    for split in splits:
        for kind in ("input", "gt"):
            (root / split / kind).mkdir(parents=True)
            shutil.copy(source / kind / IMAGE, root / split / kind / IMAGE)
    return str(root)


def _weights(tmp_path):
    """Two checkpoints with the same file name and different contents (the weights label cannot tell them)."""
    from safetensors.torch import load_file

    state = load_file(str(bundled_weights("nafnet-nano")))
    paths = []
    for index, scale in enumerate((1.0, 0.98)):
        folder = tmp_path / f"w{index}"
        folder.mkdir()
        save_file({k: (v * scale).contiguous() for k, v in state.items()}, str(folder / "w.safetensors"))
        paths.append(str(folder / "w.safetensors"))
    return paths


def variants(tmp_path) -> dict[str, RunSpec]:
    """The base run and, per setting, a run that differs from it in that setting alone."""
    pairs = _folder(tmp_path / "pairs", ("test", "val"))
    first, second = _weights(tmp_path)
    attack = AttackSpec.of("pgd", eps="8/255", steps=1)
    base = RunSpec(model=ModelSpec("nafnet-nano", first), attack=attack, data=DataSpec(pairs, limit=1))

    def but(**changes):
        return RunSpec(**{**base.__dict__, **changes})

    return {
        "base": base,
        "data": but(data=DataSpec("udc-mini", limit=1)),
        "split": but(data=DataSpec(pairs, split="val", limit=1)),
        "settings": but(attack=AttackSpec.of("pgd", eps="8/255", steps=1, restarts=2)),
        "objective": but(attack=AttackSpec.of("pgd", objective="l1-clean", eps="8/255", steps=1)),
        "mask": but(attack=AttackSpec.of("pgd", mask="box:0,0,0.5,0.5", eps="8/255", steps=1)),
        "defense": but(defense=DefenseSpec("jpeg:75")),
        "defense parameters": but(defense=DefenseSpec("jpeg:50")),
        "threat": but(defense=DefenseSpec("jpeg:75"), threat="adaptive"),
        "eot": but(defense=DefenseSpec("purify:t=10,steps=1"), threat="adaptive", eot=2),
        "eot 1": but(defense=DefenseSpec("purify:t=10,steps=1"), threat="adaptive", eot=1),
        "batch_size": but(batch_size=2),
        "precision": but(precision="bf16"),
        "scoring": but(scoring="8bit"),
        "weights_digest": but(model=ModelSpec("nafnet-nano", second)),
        "seed": but(seed=1),
        "eps": but(attack=AttackSpec.of("pgd", eps="4/255", steps=1)),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("identity")
    specs = variants(tmp_path)
    out = tmp_path / "out"
    frame = api.run_suite(list(specs.values()), out=out)
    hashes = {name: api.prepare(spec).run_hash for name, spec in specs.items()}
    return out, specs, hashes, frame


def rows_of(out):
    store = open_existing(out)
    try:
        return store.rows()
    finally:
        store.close()


def test_every_setting_gives_its_own_labelled_leaderboard_row(folder):
    out, specs, hashes, _ = folder
    assert len(set(hashes.values())) == len(specs)  # each setting changes the run hash
    table = leaderboard.summarise(rows_of(out))
    assert len(table) == len(specs) and set(table[RUN]) == set(hashes.values())
    assert (table["images"] == 1).all()
    shown = shown_columns(table)
    assert RUN not in shown  # every difference has a label of its own
    assert not table.duplicated(shown).any()
    for setting in ("data", "split", "settings", "mask", "eot", "batch_size", "precision", "scoring",
                    "weights_digest"):
        assert setting in shown, setting
    labels = table.set_index(RUN)
    assert labels.loc[hashes["settings"], "settings"] == "restarts=2"
    assert labels.loc[hashes["base"], "settings"] == "-"
    assert labels.loc[hashes["scoring"], "scoring"] == "8bit" and labels.loc[hashes["base"], "scoring"] == "float"
    assert labels.loc[hashes["weights_digest"], "weights"] == labels.loc[hashes["base"], "weights"] == "w.safetensors"
    markdown = (out / "leaderboard.md").read_text().split("## Gray-box vs adaptive")[0]
    body = [line for line in markdown.splitlines() if line.startswith("| ") and "nafnet-nano" in line]
    assert len(body) == len(specs)


def _pair(out, specs_hashes, setting) -> pd.DataFrame:
    rows = rows_of(out)
    return rows[rows[RUN].isin([specs_hashes["base"], specs_hashes[setting]])]


@pytest.mark.parametrize("setting, dimension", [
    ("data", "data"), ("split", "split"), ("settings", "settings"), ("objective", "objective"), ("mask", "mask"),
    ("defense parameters", "defense"), ("threat", "threat"), ("batch_size", "batch_size"),
    ("precision", "precision"), ("scoring", "scoring"), ("weights_digest", "weights_digest"), ("seed", "seed")])
def test_a_pivot_refuses_to_average_two_runs_and_names_the_setting(folder, setting, dimension):
    out, _, hashes, _ = folder
    rows = _pair(out, hashes, setting)
    layout = dict(rows_by=["model"], cols_by=["attack", "eps"])
    with pytest.raises(SpecError, match=rf"\b{dimension} takes"):
        tables.pivot(rows, **layout)
    table = tables.pivot(rows, rows_by=["model", dimension], cols_by=["attack", "eps"])
    assert len(table.cells) == 2 and all(cell.images == 1 for cell in table.cells.values())


def test_a_pivot_cell_never_holds_two_runs_no_label_tells_apart(folder):
    out, _, hashes, _ = folder
    rows = _pair(out, hashes, "eot")  # eot 2 vs eot 1 through purify; relabel so only the run hash differs
    rows = pd.concat([rows_of(out).query(f"{RUN} == '{hashes['eot']}'"),
                      rows_of(out).query(f"{RUN} == '{hashes['eot 1']}'").assign(eot=2)])
    with pytest.raises(SpecError, match=r"\brun takes"):
        tables.pivot(rows, rows_by=["model", "defense"], cols_by=["attack", "eps"])


def test_a_plot_draws_one_line_per_run_at_each_eps(folder):
    out, specs, _, _ = folder
    curves = plots.eps_curves(rows_of(out))
    lines = [curve for group in curves.values() for curve in group]
    assert len({c.label for c in lines}) == len(lines)
    points = sum(len(c.xs) - 1 for c in lines)  # the first point of each line is the clean input (eps 0)
    assert points == len(specs)
    path = plots.psnr_vs_eps(rows_of(out), out / "psnr_vs_eps.png")
    assert path.stat().st_size > 0


def test_check_compares_every_run_and_an_old_baseline_reports_the_ambiguity(folder, tmp_path):
    out, specs, _, _ = folder
    table = leaderboard.summarise(rows_of(out))
    current = tmp_path / "current.csv"
    current.write_text(leaderboard.to_csv(table))
    result = check.check(out, current)
    assert result.passed and result.rows == len(specs) and not result.new
    old = tmp_path / "old.csv"  # a baseline in the format of earlier versions: the classic columns only
    one = table[table["data"] == "udc-mini"]
    one[KEYS + ["images", "psnr_adv_gt"]].to_csv(old, index=False)
    result = check.check(out, old)
    assert not result.passed
    (finding,) = result.failures
    assert finding.kind == "ambiguous" and "data" in finding.metric and "split" in finding.metric
    assert "matches" in finding.describe()


def test_rows_of_an_older_udcbench_still_render(folder, tmp_path):
    out, specs, hashes, _ = folder
    old = tmp_path / "old"
    old.mkdir()
    new_columns = ("attack_settings", "weights_digest", "model_options", "scoring", "iterations")
    kept = [c for c in COLUMN_NAMES if c not in new_columns]
    source = sqlite3.connect(out / "results.db")
    with sqlite3.connect(old / "results.db") as conn:
        conn.execute(f"CREATE TABLE results ({', '.join(kept)}, PRIMARY KEY (run_hash, image))")
        conn.execute("CREATE TABLE runs (run_hash TEXT PRIMARY KEY, spec TEXT NOT NULL)")
        for name in ("base", "settings", "seed"):
            conn.executemany(f"INSERT INTO results VALUES ({', '.join('?' for _ in kept)})",
                             source.execute(f"SELECT {', '.join(kept)} FROM results WHERE run_hash = ?",
                                            (hashes[name],)).fetchall())
            conn.execute("INSERT INTO runs VALUES (?, ?)",
                         source.execute("SELECT run_hash, spec FROM runs WHERE run_hash = ?", (hashes[name],)).fetchone())
    source.close()
    store = ResultStore(old / "results.db")
    rows = store.rows()
    store.close()
    table = leaderboard.summarise(rows)
    assert len(table) == 3 and set(table["scoring"]) == {"float"} and set(table["weights_digest"]) == {"-"}
    assert sorted(table["settings"]) == ["-", "-", "restarts=2"]  # from the runs' stored specs
    assert "restarts=2" in leaderboard.to_markdown(table)
