"""The Python API — a façade over the runner; the CLI and the tests go through these same functions.
Nothing inside the package imports this module.

    import udcbench
    model = udcbench.load_model("uformer")                 # bundled uformer-nano
    attack = udcbench.make_attack("pgd", eps=8/255, steps=20)
    frame = udcbench.run(udcbench.RunSpec(), out="runs/demo")
    job = udcbench.api.prepare(spec)                         # validated, built, hashed; nothing written
"""

from udcbench.runner.identity import HASHED_WITHOUT_OPTIONS
from udcbench.runner.prepare import adaptive_attack_for, attack_warnings, prepare, resolve_device
from udcbench.runner.run import replay, run, run_plan, run_suite

__all__ = ["HASHED_WITHOUT_OPTIONS", "adaptive_attack_for", "attack_warnings", "prepare", "replay",
           "resolve_device", "run", "run_plan", "run_suite"]
