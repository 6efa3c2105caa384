"""What udcbench asks of a plugin model: a contract, optional shipped weights, and a clear error when it breaks."""

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from udcbench.cli import app
from udcbench.errors import MissingWeightsError, PluginError
from udcbench.models import bundled_weights, load_model
from udcbench.registry import MODELS
from plugin_helpers import install_plugin

SOURCE = """
import torch
from udcbench.models.base import InputContract
from udcbench.registry import register_model

WEIGHTS = {weights!r}


@register_model("plug-net", family="plug-net", {contract}bundled_weights={declared})
def plug_net():
    return torch.nn.Conv2d(3, 3, 1)
"""


def plugin(tmp_path, monkeypatch, contract=True, declared="lambda: WEIGHTS", weights=None):
    source = SOURCE.format(weights=str(weights), declared=declared,
                           contract="contract=InputContract(), " if contract else "")
    install_plugin(tmp_path, monkeypatch, MODELS, "plug_net_plugin", source, "plug-net")


def identity_weights(path):
    save_file({"weight": torch.eye(3).reshape(3, 3, 1, 1).contiguous(), "bias": torch.zeros(3)}, str(path))
    return path


def test_a_plugin_model_loads_the_weights_it_declares(tmp_path, monkeypatch):
    weights = identity_weights(tmp_path / "plug.safetensors")
    plugin(tmp_path, monkeypatch, weights=weights)
    assert bundled_weights("plug-net") == weights
    model = load_model("plug-net")
    assert model.info.weights == "bundled:plug.safetensors"
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(model(image), image)  # the declared identity weights, not a random init


def test_declared_weights_that_are_missing_are_one_error(tmp_path, monkeypatch):
    plugin(tmp_path, monkeypatch, weights=tmp_path / "gone.safetensors")
    with pytest.raises(MissingWeightsError, match="declares bundled weights .*gone.safetensors, which is not a file"):
        load_model("plug-net")


def test_a_plugin_model_without_a_contract_is_refused_naming_the_package(tmp_path, monkeypatch):
    plugin(tmp_path, monkeypatch, contract=False, declared="None")
    with pytest.raises(PluginError, match=r"'plug-net-plugin' fails to load .*registers no contract= .*"
                                          r"pip uninstall plug-net-plugin"):
        MODELS.names()


def test_a_plugin_that_fails_to_import_is_one_error_line_in_every_command(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, MODELS, "broken_plugin", "raise RuntimeError('boom')\n", "broken")
    result = CliRunner().invoke(app, ["run", "--model", "nafnet", "--limit", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: the installed package 'broken-plugin' fails to load its entry point broken")
    assert "boom" in line and "pip uninstall broken-plugin" in line
    assert not (tmp_path / "out").exists()
