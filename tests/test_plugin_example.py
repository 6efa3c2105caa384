"""The worked plugin example (examples/udcbench-plugin-example), installed the way a lab installs it: a real
pip build of the folder, offline, into a throw-away --target folder (the shared environment is not touched), and
the real `udcbench` command run with PYTHONPATH pointing there, so udcbench finds the model and the attack through
the installed distribution's entry points alone: it lists them and runs the plugin attack on the plugin model end
to end; `udcbench load` (strict load of the shipped weights) and the attack's checks run in this process, with the
folder on sys.path and the registries re-reading their entry points."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.registry import ATTACKS, MODELS
from udcbench.runner.store import open_existing
from udcbench.spec import file_digest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "udcbench-plugin-example"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed with pip into its own folder (from a copy, so no build files land in the repo)."""
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(target),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def environment(site: Path) -> dict:
    paths = [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "COLUMNS": "250"}


def command(site: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    """`udcbench ARGS` (or `python -m udcbench_plugin_example` for args starting with '-m') in a fresh process."""
    program = [sys.executable] if args[0] == "-m" else [str(BIN / "udcbench")]
    return subprocess.run(program + [str(a) for a in args], env=environment(site), cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_pip_installs_the_entry_points_and_the_weights_outside_the_environment(site):
    # the shared environment holds no copy: only the --target folder does
    assert not [d for d in metadata.distributions() if d.metadata["Name"] == "udcbench-plugin-example"]
    (info,) = site.glob("udcbench_plugin_example-*.dist-info")
    assert (info / "entry_points.txt").is_file()
    points = {(p.group, p.name): p.value for p in metadata.Distribution.at(info).entry_points}
    assert points == {("udcbench.models", "resconv"): "udcbench_plugin_example.model",
                      ("udcbench.attacks", "random-sign"): "udcbench_plugin_example.attack"}
    weights = site / "udcbench_plugin_example" / "weights" / "resconv.safetensors"
    assert weights.is_file() and weights.stat().st_size < 100_000
    assert file_digest(weights) == file_digest(EXAMPLE / "udcbench_plugin_example" / "weights" / weights.name)


def test_the_shipped_weights_record_their_recipe_and_restore_better_than_the_input():
    from safetensors import safe_open

    with safe_open(str(EXAMPLE / "udcbench_plugin_example" / "weights" / "resconv.safetensors"), "pt") as handle:
        header = handle.metadata()
        keys = set(handle.keys())
    assert keys == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    assert (header["model"], header["data"], header["seed"], header["threads"]) == ("resconv", "udc-mini", "0", "1")
    assert "make_weights.py" in header["command"]
    assert float(header["test_psnr_restored"]) > float(header["test_psnr_degraded"]) + 1.0


def test_udcbench_lists_and_runs_the_plugin_model_and_attack(site, tmp_path):
    located = command(site, "-m", "udcbench_plugin_example", cwd=tmp_path)
    assert located.returncode == 0, located.stderr
    weights = Path(located.stdout.strip())
    assert weights == site / "udcbench_plugin_example" / "weights" / "resconv.safetensors"

    listed = command(site, "list", "models", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if "│ resconv " in line]
    assert "0.01 M" in row and "bundled" in row and "range [-1,1], ×2 (reflect)" in row

    out = tmp_path / "out"
    ran = command(site, "run", "--model", "resconv", "--attack", "random-sign", "--limit", "1", "--out", out,
                  cwd=tmp_path)  # no --weights: the plugin declares its shipped file (bundled_weights=)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    store = open_existing(out)
    rows = store.rows()
    store.close()
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["model"], row["attack"], row["norm"], row["queries"]) == ("resconv", "random-sign", "linf", 10)
    assert json.loads(row["attack_params"]) == {"eps": 8 / 255, "queries": 10}
    assert row["weights"] == "bundled:resconv.safetensors" and row["weights_digest"] == "bundled:" + file_digest(weights)
    assert row["linf"] == pytest.approx(8 / 255, abs=1e-6)  # every pixel moves by ±ε (less only where clipped)
    assert row["psnr_clean_gt"] > row["psnr_degraded_gt"]  # the trained network restores
    assert row["psnr_adv_gt"] < row["psnr_clean_gt"]  # and the noise costs it
    assert "random-sign" in (out / "leaderboard.md").read_text(encoding="utf-8")


@pytest.fixture
def in_this_process(site, monkeypatch):
    """The --target folder on this process's sys.path, with the registries re-reading their entry points (the
    built-in entries and the registries' state are restored after the test)."""
    for registry in (MODELS, ATTACKS):
        registry.names()
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    for name in [m for m in sys.modules if m.split(".")[0] == "udcbench_plugin_example"]:
        del sys.modules[name]


def test_load_checks_the_shipped_weights_and_the_contract_pads_odd_sizes(in_this_process):
    """`udcbench load` in this process (the same command; a fresh process costs seconds of imports here)."""
    weights = in_this_process / "udcbench_plugin_example" / "weights" / "resconv.safetensors"
    loaded = CliRunner().invoke(app, ["load", "resconv", "--weights", str(weights), "--size", "45"],
                                env={"COLUMNS": "250"})
    assert loaded.exit_code == 0, loaded.output
    assert f"ok resconv: weights {weights}" in loaded.output
    assert "parameters  6,956" in loaded.output and "1×3×45×45 -> (1, 3, 45, 45)" in loaded.output
    assert "contract    range [-1,1], ×2 (reflect)" in loaded.output


def test_the_attack_lists_its_metadata_and_refuses_a_bad_budget_before_anything_is_written(in_this_process,
                                                                                           tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "attacks"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    (row,) = [line for line in listed.output.splitlines() if "│ random-sign " in line]
    assert "black-box" in row and "linf" in row and "eps=8/255, queries=10" in row

    out = tmp_path / "never"
    result = runner.invoke(app, ["run", "--model", "resconv", "--weights", "random", "--attack", "random-sign",
                                 "--queries", "0", "--limit", "1", "--out", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "random-sign: queries (the number of random draws) must be at least 1, got 0" in lines[0]
    assert not out.exists()
