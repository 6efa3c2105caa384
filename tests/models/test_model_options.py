"""Model options: `NAME:key=value[&key=value]`, per-model tables, recorded in info.extra["options"]."""

import pytest

from udcbench.errors import SpecError, UnknownNameError
from udcbench.models import format_model_spec, load_model, option_table, resolve_name, resolve_options
from udcbench.registry import MODELS


def test_family_names_resolve_with_and_without_options():
    assert resolve_name("uformer") == ("uformer-nano", "uformer")
    assert resolve_name("uformer:train_patch=256") == ("uformer-nano", "uformer")
    assert resolve_name("uformer-t:train_patch=256") == ("uformer-t", None)
    model = load_model("uformer:train_patch=128")
    assert model.info.name == "uformer-nano" and model.info.resolved_from == "uformer"
    assert model.info.extra["options"] == {"train_patch": 128}


def test_unknown_model_with_options_is_still_an_unknown_name():
    with pytest.raises(UnknownNameError, match="unknown model 'nosuch'"):
        load_model("nosuch:train_patch=128")


def test_defaults_are_filled_in_and_overridden():
    assert resolve_options("uformer-t") == {"train_patch": 128}
    assert resolve_options("uformer-t", "train_patch=256") == {"train_patch": 256}
    assert resolve_options("uformer-t", None, {"train_patch": 512}) == {"train_patch": 512}
    assert resolve_options("uformer-t", "train_patch=256", {"train_patch": "256"}) == {"train_patch": 256}


def test_options_keyword_and_spec_string_are_equivalent():
    by_text = load_model("uformer-nano:train_patch=256", weights="random")
    by_dict = load_model("uformer-nano", weights="random", options={"train_patch": 256})
    assert by_text.info.extra["options"] == by_dict.info.extra["options"] == {"train_patch": 256}
    spec = format_model_spec(by_text.info.name, by_text.info.extra["options"])
    assert spec == "uformer-nano:train_patch=256"
    assert load_model(spec, weights="random").info.extra["options"] == {"train_patch": 256}
    assert format_model_spec("nafnet-nano", {}) == "nafnet-nano"


def test_models_without_options_record_an_empty_table_and_refuse_any():
    for name in ("nafnet-nano", "wiener"):
        assert option_table(name) == {}
        weights = "random" if name == "nafnet-nano" else None
        assert load_model(name, weights=weights).info.extra["options"] == {}
        with pytest.raises(SpecError, match=rf"model {name} takes no options \(got 'train_patch=128'\); use "
                                            rf"--model {name}$"):
            load_model(f"{name}:train_patch=128", weights=weights)
        with pytest.raises(SpecError, match="takes no options"):
            load_model(name, weights=weights, options={"train_patch": 128})


def test_every_registered_option_has_a_default_that_parses_and_a_help_line():
    for entry in MODELS.entries():
        for key, option in entry.info.get("options", {}).items():
            assert option.help and "\n" not in option.help
            assert option.parse(str(option.default)) == option.default, (entry.name, key)


@pytest.mark.parametrize("spec, match", [
    ("uformer-t:patch=256", r"model uformer-t has no option 'patch'; its options: train_patch \(.*default 128\); "
                            r"e\.g\. --model uformer-t:train_patch=128"),
    ("uformer-t:", r"nothing follows ':'; write e\.g\. --model uformer-t:train_patch=128 or drop the ':'"),
    ("uformer-t:train_patch", r"option 'train_patch' is not key=value"),
    ("uformer-t:train_patch=", r"option 'train_patch=' is not key=value"),
    ("uformer-t:train_patch=128&train_patch=256", r"option train_patch is given twice \(128 and 256\)"),
])
def test_option_errors_are_one_line_with_the_valid_options_and_an_example(spec, match):
    with pytest.raises(SpecError, match=match) as caught:
        load_model(spec, weights="random")
    assert "\n" not in str(caught.value)


def test_conflicting_keyword_and_text_options_are_refused():
    with pytest.raises(SpecError, match="given twice"):
        load_model("uformer-nano:train_patch=128", weights="random", options={"train_patch": 256})
