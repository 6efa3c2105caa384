"""Names and install advice: did-you-mean wherever a name is matched against a known list, the one rule by which a
family name resolves, the `needs` marks of `udcbench list`, and install hints that keep the pinned torch."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from udcbench import registry
from udcbench.attacks.base import make_attack
from udcbench.cli import app
from udcbench.cli.common import console
from udcbench.defenses import make_defense
from udcbench.defenses.adm import complete_flags, parse_adm_config
from udcbench.errors import MissingWeightsError, SpecError, UnknownNameError
from udcbench.models import bundled_weights, family_caption, family_names, resolve_name, resolve_options
from udcbench.registry import ATTACKS, DEFENSES, MODELS, did_you_mean
from udcbench.runner.suite import attack_settings

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("typo, known, meant", [
    ("step", ["eps", "alpha", "steps"], "steps"), ("tstar", ["t", "t_star", "steps"], "t_star"),
    ("pdg", ["pgd", "fgsm", "cw"], "pgd"), ("ufromer", ["uformer", "nafnet"], "uformer"),
    ("ddmi", ["ddim", "ddpm"], "ddim"), ("ATTACKS", ["models", "attacks"], "attacks")])
def test_did_you_mean_offers_the_name_a_typo_meant(typo, known, meant):
    assert did_you_mean(typo, known) == f" (did you mean {meant!r}?)"


@pytest.mark.parametrize("name, known", [("steps", ["eps", "queries", "p_init"]), ("xyz", ["pgd", "fgsm"]),
                                         ("pgd", ["pgd"]), ("", ["pgd"]), ("pgd", [])])
def test_did_you_mean_stays_quiet_without_a_likely_name(name, known):
    assert did_you_mean(name, known) == ""


@pytest.mark.parametrize("typo, meant", [("ufromer", "uformer"), ("uformr", "uformer"), ("nafnte", "nafnet"),
                                         ("uformer-tt", "uformer-t"), ("discnet-nan", "discnet-nano")])
def test_misspelt_model_names_get_a_suggestion(typo, meant):
    with pytest.raises(UnknownNameError) as raised:
        resolve_name(f"{typo}:train_patch=128")
    message = str(raised.value)
    assert message.startswith(f"unknown model {typo!r} (did you mean {meant!r}?); known models: ")
    assert all(name in message for name in MODELS.names())


def test_cli_model_typos_are_one_line_with_the_suggestion(tmp_path):
    line = error_line(invoke("load", "uformr"))
    assert "unknown model 'uformr' (did you mean 'uformer'?)" in line
    out = tmp_path / "run"
    line = error_line(invoke("run", "--model", "ufromer", "--limit", "1", "--out", str(out)))
    assert "unknown model 'ufromer' (did you mean 'uformer'?)" in line and not out.exists()


def test_model_options_defense_settings_and_adm_flags_get_a_suggestion():
    with pytest.raises(SpecError, match=r"no option 'train_pach' \(did you mean 'train_patch'\?\); its options"):
        resolve_options("uformer-nano", "train_pach=3")
    with pytest.raises(SpecError, match=r"no setting\(s\) stesp \(did you mean 'steps'\?\), tstar \(did you mean "
                                        r"'t_star'\?\); its settings"):
        make_defense("purify:tstar=20,stesp=3")
    with pytest.raises(SpecError, match=r"denoise='prir' \(did you mean 'prior'\?\) must be none or prior"):
        make_defense("smooth:denoise=prir")
    with pytest.raises(SpecError, match=r"unknown ADM config 'adm-256-uncnd' \(did you mean 'adm-256-uncond'\?\)"):
        parse_adm_config("adm-256-uncnd")
    with pytest.raises(SpecError, match=r"unknown ADM flag\(s\) num_channel \(did you mean 'num_channels'\?\)"):
        complete_flags({"num_channel": 64})


def test_attack_parameter_names_get_a_suggestion_wherever_they_are_checked():
    for check in (lambda: make_attack("pgd", step=3), lambda: attack_settings("pgd", {"step": 3})):
        with pytest.raises(SpecError) as raised:
            check()
        assert str(raised.value) == ("attack 'pgd' has no parameter(s) step (did you mean 'steps'?); its parameters "
                                     "are eps, alpha, steps, random_start, restarts (defaults: `udcbench list attacks`)")
    with pytest.raises(SpecError) as raised:
        make_attack("square", steps=3)  # square counts queries; 'eps' is no likely meaning of 'steps'
    assert "did you mean" not in str(raised.value) and "are eps, queries, p_init" in str(raised.value)


def test_list_of_an_unknown_kind_names_the_choices():
    line = error_line(invoke("list", "atacks"))
    assert line == ("error: unknown kind 'atacks' (did you mean 'attacks'?); choose from models, attacks, defenses, "
                    "datasets, metrics")
    assert error_line(invoke("list", "nosuch")).endswith("unknown kind 'nosuch'; choose from models, attacks, "
                                                         "defenses, datasets, metrics")


# --- the one rule by which a family name resolves ---

def families() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in MODELS.entries():
        found.setdefault(entry.info["family"], []).append(entry.name)
    return found


@pytest.mark.parametrize("family", sorted(families()))
def test_every_family_name_resolves_by_the_one_rule(family):
    configs = families()[family]
    config, picked_by = resolve_name(family)
    assert config in configs and family_names()[family] == config
    if family in configs:  # a configuration name always means that configuration
        assert (config, picked_by) == (family, None)
    else:  # any other family name: the family's configuration with bundled weights
        assert bundled_weights(config) is not None and picked_by == family
    for name in configs:
        assert resolve_name(name) == (name, None)


def test_a_release_configuration_without_weights_points_to_its_bundled_sibling():
    from udcbench.models import load_model

    checked = []
    for family, configs in families().items():
        bundled = [name for name in configs if bundled_weights(name)]
        if family in configs and bundled and family not in bundled:  # discnet, dwformer
            checked.append(family)
            with pytest.raises(SpecError, match=rf"'{family}' has no bundled weights; .*for the family's bundled "
                                                rf"weights use --model {bundled[0]}$"):
                load_model(family)
    assert checked


def test_family_rule_keeps_the_readme_job_and_committed_suites_on_bundled_weights():
    assert resolve_name("uformer")[0] == "uformer-nano"  # the README's main job: `udcbench run --model uformer`
    named = set()
    for suite in (ROOT / "benchmarks").glob("*.yaml"):
        for model in yaml.safe_load(suite.read_text()).get("models", []):
            named.add(model["name"] if isinstance(model, dict) else model)
    assert {"uformer", "nafnet", "discnet-nano"} <= named
    for name in named:
        entry = MODELS.get(resolve_name(name)[0])
        assert bundled_weights(entry.name) or entry.info.get("weights_free"), name


def test_list_models_shows_where_each_family_name_leads(monkeypatch):
    monkeypatch.setattr(console, "width", 400)
    result = invoke("list", "models")
    assert result.exit_code == 0, result.output
    caption = " ".join(family_caption().split())
    assert caption in " ".join(result.output.split())
    for family, config in family_names().items():
        shown = f"{family} → {config}" if config != family else family
        assert shown in caption


# --- what an entry needs: `udcbench list` marks ---

def row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(f"│ {name} "))


@pytest.mark.parametrize("installed", [False, True])
def test_list_marks_entries_whose_extra_is_not_installed(monkeypatch, installed):
    monkeypatch.setattr(console, "width", 400)
    monkeypatch.setattr(registry, "module_available", lambda module: installed)
    attacks = invoke("list", "attacks")
    defenses = invoke("list", "defenses")
    metrics = invoke("list", "metrics")
    assert attacks.exit_code == defenses.exit_code == metrics.exit_code == 0
    xcheck = ("xcheck (installed)" if installed else
              "xcheck (not installed: pip install -c constraints.txt 'udcbench[xcheck]')")
    for name in ("advertorch:pgd", "foolbox:pgd"):
        assert xcheck in row(attacks.output, name)
    assert "xcheck" not in row(attacks.output, "pgd") and "│ - " in row(attacks.output, "pgd")
    diffusers = "diffusers for prior=DIR " + (
        "(installed)" if installed else "(not installed: pip install -c constraints.txt 'udcbench[diffusers]')")
    assert diffusers in row(defenses.output, "purify") and diffusers in row(defenses.output, "smooth")
    pyiqa = "pyiqa " + ("(installed)" if installed else
                        "(not installed: pip install -c constraints.txt 'udcbench[pyiqa]')")
    assert pyiqa in " ".join(metrics.output.split())


def test_metric_needs_say_whether_they_are_found(monkeypatch, tmp_path):
    from udcbench.metrics import lpips

    monkeypatch.setenv("UDCBENCH_LPIPS_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(lpips, "_lpips_package_weights", lambda: [])
    metric = registry.METRICS.get("lpips-alex")
    assert registry.needs_met(metric.info["needs"], metric.info["check"]).endswith("(not found here)")
    assert registry.needs_met("local weights", lambda: None) == "local weights (found)"
    assert registry.needs_met("", None) == "-"


def test_an_unknown_extra_is_refused_at_registration():
    with pytest.raises(ValueError, match="names the extra 'nosuch'; known extras: xcheck"):
        ATTACKS.register("needs-nosuch", extra="nosuch")(object)
    assert "needs-nosuch" not in ATTACKS.names()
    assert {entry.info.get("extra") for entry in DEFENSES.entries() + ATTACKS.entries()} - {None} <= set(
        registry.EXTRAS)


# --- install advice ---

def pyproject_extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def install_hints() -> list[tuple[str, str]]:
    """(file, the 160 characters from each 'pip install') over the package source, string joins undone."""
    hints = []
    for path in sorted((ROOT / "udcbench").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"pip install", text):
            window = re.sub(r"[\"']?\s*\n\s*f?[\"']?", " ", text[match.start():match.start() + 160])
            hints.append((str(path.relative_to(ROOT)), window))
    return hints


def test_every_install_hint_is_pinned_by_the_constraints():
    hints = install_hints()
    assert len(hints) >= 8  # xcheck, diffusers, ray, data, pyiqa, lpips, h5py, the Extra class itself
    for where, hint in hints:
        parsed = re.match(r"pip install -c constraints\.txt ((?:--[\w-]+ )*)'?([\w.-]+)", hint)
        assert parsed, (where, hint)
        flags, package = parsed.groups()
        assert package not in ("torch", "torchvision"), (where, hint)
        if package == "lpips":  # the lpips wheel requires torch and torchvision; udcbench reads only its files
            assert "--no-deps" in flags, (where, hint)


def test_every_extra_a_hint_names_exists():
    extras = pyproject_extras()
    named = set()
    for path in (ROOT / "udcbench").rglob("*.py"):
        named |= set(re.findall(r"udcbench\[([a-z0-9_-]+)\]", path.read_text()))
        named |= set(re.findall(r"'\.\[([a-z0-9_-]+)\]'", path.read_text()))
    assert {"xcheck", "diffusers", "ray", "data", "pyiqa"} <= named
    assert named <= extras, named - extras
    assert set(registry.EXTRAS) <= extras


def test_missing_lpips_weights_name_an_install_that_keeps_torch(monkeypatch, tmp_path):
    from udcbench.metrics import lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(lpips, "_lpips_package_weights", lambda: [])
    with pytest.raises(MissingWeightsError) as raised:
        lpips.find_weights("alex", weights_dir=tmp_path)
    assert "pip install -c constraints.txt --no-deps lpips" in str(raised.value)
