"""--executor ray: the planned units as Ray tasks on a local cluster give exactly the local executor's rows."""

import pytest

from udcbench import api
from udcbench.runner.store import open_existing
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

ray = pytest.importorskip("ray", reason="Ray cannot be installed on this platform; the ray extra "
                          "(pip install -c constraints.txt '.[ray]') is what this test needs")

COMPARED = ["run_hash", "image", "psnr_clean_gt", "ssim_clean_gt", "psnr_adv_gt", "ssim_adv_gt", "psnr_adv_clean",
            "linf", "queries"]


def specs():
    return [RunSpec(model=ModelSpec(model), attack=attack, defense=DefenseSpec(defense),
                    data=DataSpec("udc-mini", limit=3), batch_size=batch)
            for model in ("nafnet", "uformer")
            for attack in (AttackSpec.of("pgd", eps="8/255", steps=2), AttackSpec.of("simba", iterations=5))
            for defense in ("none", "jpeg:75") for batch in (1, 2)]


def test_ray_executor_writes_the_same_csv_as_the_local_executor(tmp_path):
    local = api.run_suite(specs(), out=tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        distributed = api.run_suite(specs(), out=tmp_path / "ray", executor="ray")
    finally:
        ray.shutdown()
    assert distributed.attrs["units"] == local.attrs["units"] == 2 * (3 + 2)  # models × (batches of 1 + batches of 2)
    assert (tmp_path / "ray" / "leaderboard.csv").read_text() == (tmp_path / "local" / "leaderboard.csv").read_text()
    stores = [open_existing(tmp_path / name) for name in ("local", "ray")]
    frames = [store.rows()[COMPARED] for store in stores]
    for store in stores:
        store.close()
    assert len(frames[0]) == 3 * 16 and frames[0].equals(frames[1])
    assert distributed.attrs["work"]["reused"]["adversarial example"] == local.attrs["work"]["reused"][
        "adversarial example"] > 0


def test_ray_is_never_imported_by_the_local_executor(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from udcbench import api; from udcbench.spec import *; "
            "api.run_suite([RunSpec(model=ModelSpec('nafnet'), attack=AttackSpec.of('fgsm'), "
            "data=DataSpec('udc-mini', limit=1))]); print('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
