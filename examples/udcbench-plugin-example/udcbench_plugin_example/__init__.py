"""udcbench-plugin-example: a worked third-party package for udcbench.

It adds, through entry points (see pyproject.toml), one model and one attack:

- `resconv` (model.py): a small residual restoration network, trained on udc-mini by make_weights.py; its
  weights ship inside this package (weights/resconv.safetensors) and `weights_path("resconv")` finds them.
- `random-sign` (attack.py): L∞ random-sign noise at the full budget, the best of a few draws (a score-based
  black-box control that any real attack should beat).

model.py registers `bundled_weights=weights_path`, so `udcbench run --model resconv` loads the shipped weights
like udcbench's own bundled ones; `python -m udcbench_plugin_example` prints their path (for `--weights FILE`
elsewhere, or to check the install).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__version__ = "0.1.0"

SHIPPED = {"resconv": "resconv.safetensors"}


def weights_path(name: str = "resconv") -> Path:
    """The shipped weights of model `name` as a file path (inside the installed package).

    `importlib.resources.files` finds package data wherever the package was installed from: a wheel in
    site-packages, `pip install --target DIR`, or an editable install of this folder (a plain-folder package,
    so the resource is a real file and the path can be handed to `udcbench --weights`). Raises udcbench's
    MissingWeightsError when there are none (imported only then: finding the path imports neither udcbench
    nor torch, so `python -m udcbench_plugin_example` answers at once).
    """
    if name not in SHIPPED:
        from udcbench.errors import MissingWeightsError

        raise MissingWeightsError(f"udcbench-plugin-example ships no weights for {name!r}; it ships weights for "
                                  f"{', '.join(sorted(SHIPPED))}")
    path = Path(str(resources.files(__name__) / "weights" / SHIPPED[name]))
    if not path.is_file():
        from udcbench.errors import MissingWeightsError

        raise MissingWeightsError(f"the shipped weights {path} are missing: the package was installed without its "
                                  "package data; reinstall it (pip install --no-deps examples/udcbench-plugin-example)"
                                  " or make them with `python examples/udcbench-plugin-example/make_weights.py`")
    return path
