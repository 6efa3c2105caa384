"""The shipped examples and citation metadata: the GitHub Actions workflow example runs the same udcbench
commands as .ci/run on files that exist, CITATION.cff is valid CFF 1.2.0 metadata for this version, and the
LICENSE is the MIT license that pyproject.toml declares."""

import re
import shlex
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "github-actions" / "udcbench.yml"


def udcbench_commands(lines) -> list[list[str]]:
    """Every shell line that runs the udcbench CLI, split into words."""
    return [shlex.split(line) for line in (str(line).strip() for line in lines) if line.startswith("udcbench ")]


def workflow_steps() -> list[dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    (job,) = workflow["jobs"].values()
    return job["steps"]


def test_the_workflow_parses_and_triggers_on_pushes_and_pull_requests():
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow["name"] == "udcbench"
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"].startswith("ubuntu")
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/checkout@") for u in uses)
    setup = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["cache"] == "pip" and "constraints.txt" in setup["with"]["cache-dependency-path"]


def test_the_workflow_installs_the_pinned_cpu_build():
    runs = "\n".join(step.get("run", "") for step in workflow_steps())
    installs = [shlex.split(line) for line in runs.splitlines() if line.strip().startswith("pip install")]
    assert len(installs) == 1, runs
    words = installs[0]
    assert words[words.index("-c") + 1] == "constraints.txt"
    assert words[words.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert ".[test]" in words
    assert re.search(r"^torch==[\d.]+$", (ROOT / "constraints.txt").read_text(), re.M)


def test_the_workflow_runs_the_commands_of_ci_run():
    ci = udcbench_commands((ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines())
    steps = udcbench_commands(line for step in workflow_steps() for line in step.get("run", "").splitlines())
    assert [c[:2] for c in ci] == [["udcbench", "run"], ["udcbench", "check"]], ci
    assert steps == ci


def test_the_paths_the_workflow_names_exist_and_the_artifact_is_the_runs_leaderboard():
    steps = workflow_steps()
    run, check = udcbench_commands(line for step in steps for line in step.get("run", "").splitlines())
    suite, out = run[run.index("--suite") + 1], run[run.index("--out") + 1]
    baseline = check[check.index("--baseline") + 1]
    assert (ROOT / suite).is_file() and (ROOT / baseline).is_file()
    assert check[2] == out  # the gate reads the folder the run wrote
    assert yaml.safe_load((ROOT / suite).read_text(encoding="utf-8"))["models"]
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    assert {Path(p).parent.as_posix() for p in upload["with"]["path"].split()} == {out}
    assert {Path(p).name for p in upload["with"]["path"].split()} == {"leaderboard.csv", "leaderboard.md"}


def test_citation_cff_is_cff_1_2_0_with_the_package_version():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert {"cff-version", "message", "title", "authors"} <= set(citation)  # CFF 1.2.0's required keys
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == project["version"]
    assert citation["license"] == project["license"]["text"] == "MIT"
    assert str(citation["date-released"]) == "2026-12-01"
    assert citation["authors"] == [{"name": "the udcbench authors"}]
    (study,) = citation["references"]
    assert {"type", "title", "authors"} <= set(study)  # a CFF reference's required keys
    assert study["doi"] == "10.3390/s25113386" and study["journal"] == "Sensors"
    assert (study["volume"], study["issue"], study["start"], study["year"]) == (25, 11, 3386, 2025)
    assert all({"family-names", "given-names"} <= set(author) for author in study["authors"])


def test_license_is_mit_with_the_copyright_line():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the udcbench authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
