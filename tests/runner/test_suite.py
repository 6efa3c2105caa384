"""Suite files and command-line cross products: expansion, validation with line numbers, the shipped suites."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.errors import SpecError
from udcbench.runner.store import open_existing
from udcbench.runner.suite import load_suite

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_expansion_is_the_cross_product_in_file_order(tmp_path):
    suite = load_suite(write(tmp_path, """\
suite: grid
data: {name: udc-mini, limit: 2}
seeds: [0, 1]
models: [uformer, {name: nafnet}]
attacks:
  - {name: pgd, eps: [2/255, 8/255], steps: 3}
  - fgsm
defenses: [none, jpeg:75]
threats: [gray-box, adaptive]
exclude:
  - {attack: fgsm, defense: jpeg:75, threat: adaptive}
"""))
    specs = suite.specs()
    # 2 models × 3 attack settings × 2 defenses × 2 threats × 2 seeds = 48; adaptive × none (12) is the gray-box
    # run, and the exclude rule drops fgsm × jpeg × adaptive (2 models × 2 seeds)
    assert len(specs) == 48 - 12 - 4
    assert suite.skipped == 12 and suite.excluded == 4
    assert [s.model.name for s in specs[:2]] == ["uformer", "uformer"]
    first = specs[0]
    assert dict(first.attack.params) == {"eps": "2/255", "steps": 3} and first.defense.spec == "none"
    assert first.data.limit == 2 and first.seed == 0 and specs[1].seed == 1
    assert not any(s.threat == "adaptive" and s.defense.spec == "none" for s in specs)
    assert not any(s.attack.name == "fgsm" and s.defense.spec == "jpeg:75" and s.threat == "adaptive" for s in specs)
    assert len({s for s in specs}) == len(specs)


@pytest.mark.parametrize("text, line, fragment", [
    ("models: [uformer]\nattacks: [pgd]\nmodles: [x]\n", 3, "unknown key 'modles' in the suite"),
    ("models: [uformer]\nattacks:\n  - name: pgd\n    epss: 8/255\n", 4, "unknown key 'epss' in attack pgd"),
    ("models:\n  - {name: uformer, weight: x}\nattacks: [pgd]\n", 2, "unknown key 'weight' in a model"),
    ("attacks:\n  - {name: nosuch}\n", 2, "nosuch"),
    ("attacks: [pgd]\nexclude:\n  - {attacks: pgd}\n", 3, "unknown key 'attacks' in an exclude rule"),
    ("attacks: [pgd\n", 2, "not valid YAML"),
])
def test_mistakes_name_the_file_and_line(tmp_path, text, line, fragment):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as raised:
        load_suite(path)
    message = str(raised.value)
    assert f"{path}:{line}:" in message and fragment in message


def test_shipped_suites_load_and_cover_what_they_promise():
    from udcbench.registry import ATTACKS, MODELS

    paper = load_suite(BENCHMARKS / "paper.yaml")
    specs = paper.specs()
    pgd = sorted({dict(s.attack.params)["eps"] for s in specs if s.attack.name == "pgd"})
    assert pgd == ["1/255", "2/255", "4/255", "8/255"]
    assert {s.attack.name for s in specs} == {"pgd", "cw", "simba", "lpips-pgd"}
    assert {s.defense.spec for s in specs} == {"none", "purify", "ft", "purify+ft"}
    assert {s.threat for s in specs} == {"gray-box", "adaptive"}
    assert all(dict(s.attack.params).get("steps") == 20 for s in specs if s.attack.name == "pgd")

    ci = load_suite(BENCHMARKS / "ci.yaml").specs()
    assert 10 <= len(ci) <= 40 and all(s.data.limit for s in ci)

    full = load_suite(BENCHMARKS / "full.yaml").specs()
    runnable = {e.name for e in MODELS.entries() if e.info.get("weights_free")} | {
        name for name in MODELS.names() if (Path(__file__).resolve().parents[2] / "udcbench" / "models" / "weights"
                                            / f"{name}.safetensors").is_file()}
    assert {s.model.name for s in full} == runnable
    assert {s.attack.name for s in full} == set(ATTACKS.names())


def test_command_line_values_expand_and_attacks_take_only_their_parameters(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--model", "nafnet", "--attack", "fgsm,cw", "--eps", "2/255,8/255",
                                      "-p", "steps=2", "--limit", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "cross product: 3 runs" in result.output and "shared work:" in result.output
    store = open_existing(out)
    rows = store.rows()
    store.close()
    assert sorted(zip(rows["attack"], rows["eps"].round(6).fillna(-1))) == sorted(
        [("fgsm", round(2 / 255, 6)), ("fgsm", round(8 / 255, 6)), ("cw", -1)])
    assert (rows.loc[rows["attack"] == "cw", "steps"] == 2).all()


def test_command_line_refuses_what_it_cannot_honour(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--attack", "fgsm,simba", "--steps", "3", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "no attack among fgsm, simba takes steps" in result.output
    result = runner.invoke(app, ["run", "--suite", str(BENCHMARKS / "ci.yaml"), "--model", "nafnet",
                                 "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--model cannot be combined with --suite" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
