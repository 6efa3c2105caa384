"""udcbench: adversarial robustness benchmark for under-display-camera image restoration."""

import os

from udcbench.version import __version__

# torch's CPU allocator puts buffers of 2 MB and more on transparent huge pages when this is set before its first
# allocation: fewer page faults for the large activations of full-resolution attacks (udcbench.models.host_memory)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from udcbench.runner.run import run  # noqa: E402
from udcbench.attacks import make_attack  # noqa: E402
from udcbench.data import load_dataset  # noqa: E402
from udcbench.defenses import make_defense  # noqa: E402
from udcbench.models import load_model  # noqa: E402
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec  # noqa: E402

__all__ = ["AttackSpec", "DataSpec", "DefenseSpec", "ModelSpec", "RunSpec", "__version__", "load_dataset",
           "load_model", "make_attack", "make_defense", "run"]
