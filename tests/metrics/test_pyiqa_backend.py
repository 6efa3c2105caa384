import importlib.util
import sys
import types

import pytest
import torch

from udcbench.errors import MissingExtraError, UnknownNameError
from udcbench.metrics.pyiqa_backend import pyiqa_metric


def check_message(message, name="lpips"):
    assert message.startswith(f"pyiqa:{name} needs pyiqa, which does not import here (")
    assert "pip install -c constraints.txt 'udcbench[pyiqa]'" in message and "torchvision works" in message
    assert f"built for the installed torch (here {torch.__version__})" in message
    assert "\n" not in message


@pytest.mark.skipif(importlib.util.find_spec("pyiqa") is not None, reason="pyiqa is installed here")
def test_real_import_failure_is_a_clear_error():
    with pytest.raises(MissingExtraError) as error:
        pyiqa_metric("lpips")
    check_message(str(error.value))
    assert "ModuleNotFoundError" in str(error.value)


def test_blocked_import_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # makes `import pyiqa` raise ImportError
    with pytest.raises(MissingExtraError) as error:
        pyiqa_metric("dists")
    check_message(str(error.value), "dists")


@pytest.mark.parametrize("failure", [RuntimeError("operator torchvision::nms does not exist\nmore detail"),
                                     OSError("libc10_cuda.so: cannot open shared object file")])
def test_failure_while_importing_is_a_clear_error(tmp_path, monkeypatch, failure):
    package = tmp_path / "pyiqa"
    package.mkdir()
    (package / "__init__.py").write_text(f"raise {type(failure).__name__}({str(failure)!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyiqa", raising=False)
    with pytest.raises(MissingExtraError) as error:
        pyiqa_metric("lpips")
    message = str(error.value)
    check_message(message)
    assert str(failure).splitlines()[0] in message and type(failure).__name__ in message


def test_other_errors_are_not_swallowed(tmp_path, monkeypatch):
    (tmp_path / "pyiqa").mkdir()
    (tmp_path / "pyiqa" / "__init__.py").write_text("raise ZeroDivisionError('a bug in pyiqa')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pyiqa", raising=False)
    with pytest.raises(ZeroDivisionError):
        pyiqa_metric("lpips")


def fake_pyiqa(calls):
    module = types.ModuleType("pyiqa")

    class Metric:
        lower_better = True

        def __call__(self, x, y):
            return (x - y).pow(2).flatten(1).mean(dim=1, keepdim=True)  # pyiqa returns (B, 1)

    def create_metric(name, as_loss=False, device=None):
        calls.append((name, as_loss, device))
        return Metric()

    module.create_metric = create_metric
    module.list_models = lambda: ["lpips", "dists", "ssim"]
    return module


def test_wraps_create_metric(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "pyiqa", fake_pyiqa(calls))
    metric = pyiqa_metric("dists", device="cpu", as_loss=True)
    assert calls == [("dists", True, torch.device("cpu"))]
    assert metric.higher_is_better is False
    x, y = torch.zeros(3, 3, 8, 8), torch.ones(3, 3, 8, 8)
    assert torch.equal(metric(x, y), torch.ones(3))
    with pytest.raises(UnknownNameError, match="did you mean 'dists'"):
        pyiqa_metric("dist")
