"""Optional metric backend: any full-reference metric of pyiqa (IQA-PyTorch, Chaofeng Chen et al.,
github.com/chaofengc/IQA-PyTorch) through `pyiqa.create_metric(name, as_loss=..., device=...)`.

pyiqa is an extra (`pip install -c constraints.txt 'udcbench[pyiqa]'`, left unpinned) and imports torchvision,
which must be built for the installed torch, so with the CPU torch that constraints.txt pins it does not import.
It is imported only when a metric is asked for; a failed import becomes MissingExtraError with the reason. pyiqa
fetches its own weights into its cache on first use; udcbench itself downloads nothing, so on an offline machine
put them there first. The native `udcbench.metrics.lpips` needs neither pyiqa nor torchvision.

    >>> dists = pyiqa_metric("dists", device="cuda")
    >>> dists(restored, ground_truth)                      # (B,)
"""

from __future__ import annotations

import torch

from udcbench.errors import MissingExtraError, UnknownNameError
from udcbench.registry import EXTRAS, did_you_mean

INSTALL = EXTRAS["pyiqa"].install
NEEDS = (f"pyiqa ({INSTALL}; it imports torchvision, which must be built for the installed torch, so it does not "
         "import with the CPU torch of constraints.txt)")


def caption() -> str:
    """The line `udcbench list metrics` prints under its table: what pyiqa:NAME does, whether pyiqa is installed."""
    return (f"pyiqa:NAME scores any full-reference pyiqa metric as pyiqa_NAME_*; it needs the extra "
            f"{EXTRAS['pyiqa'].status()}, and pyiqa imports only with a torchvision built for the installed torch")


def _import_pyiqa(name: str):
    try:
        import pyiqa
    except (ImportError, RuntimeError, OSError) as error:  # torchvision on a mismatched torch raises these
        text = str(error).strip()
        reason = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
        raise MissingExtraError(
            f"pyiqa:{name} needs pyiqa, which does not import here ({reason}); install it with {INSTALL} where "
            f"torchvision works: pyiqa imports torchvision, which must be built for the installed torch (here "
            f"{torch.__version__}), so with the CPU torch of constraints.txt it does not import") from error
    return pyiqa


class PyiqaMetric:
    """A pyiqa metric as a callable (x, y) -> (B,) for images in [0, 1], (B, 3, H, W).

    name: the pyiqa metric name. higher_is_better: from pyiqa's `lower_better` (None when pyiqa does not say).
    as_loss=True keeps the graph so the score can be differentiated (pyiqa's own switch).
    """

    def __init__(self, name: str, metric, as_loss: bool):
        self.name = name
        self.metric = metric
        self.as_loss = as_loss
        lower_better = getattr(metric, "lower_better", None)
        self.higher_is_better = None if lower_better is None else not bool(lower_better)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        score = self.metric(x, y)
        score = torch.as_tensor(score)
        if score.numel() != x.shape[0]:
            raise ValueError(f"pyiqa:{self.name} returned {score.numel()} values for a batch of {x.shape[0]}; "
                             f"is it a full-reference metric?")
        return score.reshape(x.shape[0])

    def __repr__(self) -> str:
        return f"PyiqaMetric({self.name!r}, as_loss={self.as_loss})"


def pyiqa_metric(name: str, device: str | torch.device = "cpu", as_loss: bool = False) -> PyiqaMetric:
    """pyiqa's metric `name` on `device` as a callable (x, y) -> (B,).

    Raises MissingExtraError when pyiqa does not import, UnknownNameError when pyiqa does not know `name`.
    """
    pyiqa = _import_pyiqa(name)
    list_models = getattr(pyiqa, "list_models", None)
    if list_models is not None:
        known = list(list_models())
        if name not in known:
            raise UnknownNameError(f"pyiqa has no metric {name!r}{did_you_mean(name, known)}; see "
                                   "pyiqa.list_models()")
    metric = pyiqa.create_metric(name, as_loss=as_loss, device=torch.device(device))
    return PyiqaMetric(name, metric, as_loss)


def pyiqa_fields(name: str, device: str | torch.device = "cpu") -> dict:
    """The descriptor fields (udcbench.metrics.base.Metric) of `pyiqa:NAME`: stored as pyiqa_<name>_<pair>, its
    direction from pyiqa's `lower_better`. Raises MissingExtraError / UnknownNameError as `pyiqa_metric`."""
    import re

    metric = pyiqa_metric(name, device=device)
    if metric.higher_is_better is None:
        raise UnknownNameError(f"pyiqa:{name} does not say whether lower or higher is better "
                               "(no lower_better attribute); udcbench cannot rank or check it")
    column = "pyiqa_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return dict(name=f"pyiqa:{name}", function=metric, higher_is_better=metric.higher_is_better,
                label=f"pyiqa:{name}", column=column, needs=NEEDS,
                description=f"pyiqa's {name} (IQA-PyTorch)")
