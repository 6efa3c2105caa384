"""`udcbench evaluate`: the frozen udc-standard-v1 protocol is what the docs say, and the entry it writes is the
stored rows' worst case. The runs use a smaller protocol of the same shape (TINY) on 32×32 crops of two udc-mini
test pairs (a folder of pairs), evaluated with --limit 1."""

import json
import sqlite3
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from udcbench.attacks import make_attack
from udcbench.cli import app
from udcbench.runner import standard
from udcbench.runner.standard import STANDARD_V1, Protocol, ProtocolAttack
from udcbench.runner.suite import load_suite

runner = CliRunner()
TINY = Protocol(name="test-tiny", budget="8/255", attacks=(
    ProtocolAttack("pgd-2/255", "pgd", (("eps", "2/255"), ("steps", 2)), True),
    ProtocolAttack("pgd-8/255", "pgd", (("eps", "8/255"), ("steps", 2)), True),
    ProtocolAttack("cw", "cw", (("const", 0.1), ("steps", 3)), False),
    ProtocolAttack("simba", "simba", (("eps", "4/255"), ("iterations", 20)), True)))
UDC_MINI = Path(standard.__file__).resolve().parents[1] / "data" / "udc_mini" / "test"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """ROOT/{input,gt}/NAME.png: the top-left 32×32 of the first two udc-mini test pairs."""
    root = tmp_path_factory.mktemp("pairs")
    for kind in ("input", "gt"):
        (root / kind).mkdir()
        for path in sorted((UDC_MINI / kind).glob("*.png"))[:2]:
            Image.open(path).convert("RGB").crop((0, 0, 32, 32)).save(root / kind / path.name)
    return root


@pytest.fixture
def tiny(monkeypatch, pairs):
    """The TINY protocol in place of the standard one, on one thread (32×32 images: a second thread only waits on
    a busy CPU); yields the pairs folder."""
    import torch

    monkeypatch.setattr(standard, "CURRENT", TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield pairs
    torch.set_num_threads(threads)


def evaluate(out, data: Path, *args, limit: bool = True):
    system = ["--model", "nafnet-nano", "--data", str(data)] + (["--limit", "1"] if limit else [])
    return runner.invoke(app, ["evaluate", *system, *args, "--out", str(out)])


def numbers(entry: dict) -> dict:
    """Everything an entry compares: all of it but "run" (when, how long)."""
    return {key: value for key, value in entry.items() if key != "run"}


def test_standard_v1_is_the_documented_protocol():
    attacks = {attack.key: attack for attack in STANDARD_V1.attacks}
    assert STANDARD_V1.name == "udc-standard-v1" and STANDARD_V1.seed == 0 and STANDARD_V1.objective == "mse-clean"
    assert list(attacks) == ["pgd-1/255", "pgd-2/255", "pgd-4/255", "pgd-8/255", "cw", "simba"]
    for eps in (1, 2, 4, 8):
        built = make_attack("pgd", **dict(attacks[f"pgd-{eps}/255"].params))
        assert built.params == {"eps": eps / 255, "alpha": eps / 255 / 4, "steps": 20, "random_start": True,
                                "restarts": 1}
    assert make_attack("cw", **dict(attacks["cw"].params)).params == {"const": 0.03, "steps": 1000, "lr": 0.01}
    simba = make_attack("simba", **dict(attacks["simba"].params)).params
    assert simba["eps"] == 4 / 255 and simba["iterations"] == 1000 and simba["basis"] == "pixel"
    assert [key for key, attack in attacks.items() if attack.robust] == [
        "pgd-1/255", "pgd-2/255", "pgd-4/255", "pgd-8/255", "simba"]
    assert Fraction(STANDARD_V1.budget) == Fraction(8, 255) and STANDARD_V1.eot == 2
    assert standard.CURRENT is STANDARD_V1 and standard.PROTOCOLS == {"udc-standard-v1": STANDARD_V1}
    # frozen: a change to the definition must come with a new protocol name (and this digest)
    assert STANDARD_V1.digest == "d73c58c4aef79004"


def test_the_pgd_runs_are_the_study_grid_runs():
    paper = [a for a in load_suite("benchmarks/paper.yaml").attacks if a.name == "pgd"]
    ours = [a for a in STANDARD_V1.attacks if a.name == "pgd"]
    assert [make_attack("pgd", **dict(a.params)).params for a in paper] == \
        [make_attack("pgd", **dict(a.params)).params for a in ours]


def test_a_robust_attack_outside_the_budget_is_refused():
    wide = Protocol(name="wide", budget="4/255", attacks=(
        ProtocolAttack("pgd-8/255", "pgd", (("eps", "8/255"),), True),))
    with pytest.raises(standard.SpecError, match="within 4/255"):
        standard.check_protocol(wide)


def stored(out) -> dict[str, dict]:
    """{run hash: {column: value}} of the stored rows (one image per run with --limit 1)."""
    with sqlite3.connect(out / "results.db") as conn:
        conn.row_factory = sqlite3.Row
        return {row["run_hash"]: dict(row) for row in conn.execute("SELECT * FROM results")}


def test_entry_is_the_stored_worst_case_and_reruns_identically(tmp_path, tiny):
    out = tmp_path / "eval"
    result = evaluate(out, tiny)
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "evaluation.json").read_text())
    rows = stored(out)
    assert len(rows) == 4 and entry["data"]["images"] == 1 and entry["complete"] is False
    assert entry["protocol"]["name"] == "test-tiny" and entry["protocol"]["digest"] == TINY.digest
    assert entry["system"]["model"] == "nafnet-nano" and entry["system"]["threat"] == "gray-box"
    assert entry["system"]["weights_digest"] == next(iter(rows.values()))["weights_digest"]
    assert entry["settings"]["seed"] == 0 and entry["versions"]["udcbench"] and entry["versions"]["python"]
    attacks = entry["results"]["attacks"]
    for key, attack in attacks.items():
        row = rows[attack["run"]]
        assert attack["psnr"] == round(row["psnr_adv_gt"], 4) and attack["ssim"] == round(row["ssim_adv_gt"], 6)
    clean = next(iter(rows.values()))["psnr_clean_gt"]
    assert all(row["psnr_clean_gt"] == clean for row in rows.values())  # computed once, shared by every run
    inside = [rows[attacks[key]["run"]]["psnr_adv_gt"] for key in ("pgd-2/255", "pgd-8/255", "simba")]
    robust = entry["results"]["robust"]
    assert robust["psnr"] == round(min([clean] + inside), 4) and robust["psnr"] <= entry["results"]["clean"]["psnr"]
    ssim = [rows[attacks[key]["run"]]["ssim_adv_gt"] for key in ("pgd-2/255", "pgd-8/255", "simba")]
    assert robust["ssim"] == round(min([next(iter(rows.values()))["ssim_clean_gt"]] + ssim), 6)
    assert attacks["cw"]["robust"] is False and attacks["cw"]["l2"] > 0  # reported beside, not inside
    assert robust["over"] == ["clean", "pgd-2/255", "pgd-8/255", "simba"]
    assert sum(robust["worst_for_images"]["psnr"].values()) == 1
    markdown = (out / "evaluation.md").read_text()
    assert "PARTIAL" in markdown and markdown.count("\n| ") == 3  # header, separator, the row
    assert f"| {robust['psnr']:.2f} |" in markdown and f"| {robust['psnr']:.2f} |" in result.output
    again = evaluate(out, tiny)  # resumed from results.db: nothing recomputed, the same entry
    assert again.exit_code == 0 and len(stored(out)) == 4 and "resumed: 4 rows" in again.output
    resumed = json.loads((out / "evaluation.json").read_text())
    assert resumed["run"]["rows_resumed"] == 4 and resumed["run"]["rows_computed_now"] == 0
    assert numbers(resumed) == numbers(entry)
    fresh = evaluate(tmp_path / "fresh", tiny)  # recomputed from scratch with the same seed
    assert fresh.exit_code == 0, fresh.output
    assert numbers(json.loads((tmp_path / "fresh" / "evaluation.json").read_text())) == numbers(entry)


def test_a_defended_system_is_attacked_through_its_defense(tmp_path, tiny):
    out = tmp_path / "jpeg"
    result = evaluate(out, tiny, "--defense", "jpeg:75", limit=False)  # the whole split: a complete entry
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "evaluation.json").read_text())
    with sqlite3.connect(out / "results.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 8  # 4 runs × 2 images
    assert entry["complete"] is True and entry["data"]["images"] == 2
    assert "PARTIAL" not in (out / "evaluation.md").read_text()
    assert entry["system"]["threat"] == "adaptive" and entry["system"]["defense"] == "jpeg:75"
    assert {attack["threat"] for attack in entry["results"]["attacks"].values()} == {"adaptive"}
    assert {row["threat"] for row in stored(out).values()} == {"adaptive"}
    # a randomised defense: EOT over 2 draws for the white-box attacks, plain queries for SimBA
    planned = standard.plan_evaluation("nafnet-nano", data=str(tiny), defense="purify", limit=1, protocol=TINY)
    assert {key: job.labels["eot"] for key, job in planned.runs.items()} == {
        "pgd-2/255": 2, "pgd-8/255": 2, "cw": 2, "simba": 1}


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch"], "nosuch"),
    (["--weights", "{garbage}"], "garbage"),
    (["--data", "/no/such/dir"], "/no/such/dir"),
    (["--device", "tpu"], "device"),
    (["--defense", "nosuch"], "nosuch"),
    (["--limit", "0"], "--limit"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny, args, message):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    args = [str(garbage) if a == "{garbage}" else a for a in args]
    out = tmp_path / "never"
    result = evaluate(out, tiny, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not out.exists()
