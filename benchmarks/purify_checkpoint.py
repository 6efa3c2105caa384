"""Peak memory and time of one adaptive PGD step through k reverse DDIM steps, with and without per-step
gradient checkpointing (`purify:checkpoint=on|off`).

    python benchmarks/purify_checkpoint.py [--steps 2,5,10] [--size 256] [--model uformer-nano] [--t 100]
                                           [--guide none|mse|adv] [--threads 2]

Each configuration (k × checkpointing) runs in its own subprocess: it loads the bundled restoration model and
the bundled purification prior (64 px tiles, so a --size² image is many tiles per step), then runs two adaptive
PGD steps on one random image — purify (t* = --t, k DDIM steps, gradients through every step), the model, MSE
to its clean output, gradient w.r.t. the input — and reports its peak RSS (getrusage ru_maxrss, as
`/usr/bin/time -v` would), the RSS before the first step, and the wall time of the second (warm) step. glibc's mmap
threshold is fixed at 128 KiB in every child (as `udcbench run` does for memory-bound CPU runs) so freed blocks
do not inflate the peak.

Prints JSON lines: one per configuration, then one per k with the checkpointed / plain ratios (`step_ratio`: peak
RSS minus the RSS before the step; `wall_ratio`: warm step time), and the growth of the step memory from the
smallest to the largest k for each mode. Expected: plain step memory grows linearly with k, checkpointed stays
near one reverse step; checkpointing costs about one extra forward per step (wall_ratio ≈ 1.3–1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GB = 1e9


def _rss() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))


def child(steps: int, checkpoint: str, size: int, model_name: str, t_star: int, guide: str, threads: int) -> dict:
    import torch

    from udcbench.defenses.base import make_defense
    from udcbench.models import load_model

    torch.set_num_threads(threads)
    model = load_model(model_name)  # bundled weights, eval mode, frozen
    spec = f"purify:t={t_star},steps={steps},checkpoint={checkpoint}" + ("" if guide == "none" else f",guide={guide}")
    purifier = make_defense(spec).components[0]
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(image)
    before, wall = _rss(), 0.0
    for _ in range(2):
        started = time.perf_counter()
        x = image.clone().requires_grad_()
        loss = (model(purifier.transform(x, torch.Generator().manual_seed(1))) - target).square().mean()
        (grad,) = torch.autograd.grad(loss, x)
        image = (image + 2 / 255 * grad.sign()).clamp(0, 1)
        wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"steps": steps, "checkpoint": checkpoint, "size": size, "model": model_name, "t": t_star, "guide": guide,
            "rss_before_gb": round(before / GB, 3), "peak_rss_gb": round(peak / GB, 3),
            "step_gb": round((peak - before) / GB, 3), "wall_s": round(wall, 2)}


def spawn(args: list[str]) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1], "args": args}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="2,5,10")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="uformer-nano")
    parser.add_argument("--t", type=int, default=100)
    parser.add_argument("--guide", default="none", choices=("none", "mse", "adv"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=7, metavar=("K", "CHECKPOINT", "SIZE", "MODEL", "T", "GUIDE", "THREADS"))
    args = parser.parse_args()
    if args.child:
        k, checkpoint, size, model, t_star, guide, threads = args.child
        print(json.dumps(child(int(k), checkpoint, int(size), model, int(t_star), guide, int(threads))))
        return
    import torch

    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
                      "date": time.strftime("%Y-%m-%d")}))
    results: dict[tuple[int, str], dict] = {}
    ks = [int(k) for k in args.steps.split(",")]
    for k in ks:
        for checkpoint in ("off", "on"):
            result = spawn([str(k), checkpoint, str(args.size), args.model, str(args.t), args.guide, str(args.threads)])
            results[(k, checkpoint)] = result
            print(json.dumps(result), flush=True)
        plain, low = results[(k, "off")], results[(k, "on")]
        if "error" not in plain and "error" not in low:
            print(json.dumps({"steps": k, "step_ratio": round(low["step_gb"] / plain["step_gb"], 3),
                              "peak_ratio": round(low["peak_rss_gb"] / plain["peak_rss_gb"], 3),
                              "wall_ratio": round(low["wall_s"] / plain["wall_s"], 3)}), flush=True)
    for checkpoint in ("off", "on"):
        first, last = results[(ks[0], checkpoint)], results[(ks[-1], checkpoint)]
        if "error" not in first and "error" not in last:
            print(json.dumps({"checkpoint": checkpoint, "growth": f"k {ks[0]} → {ks[-1]}",
                              "step_gb_ratio": round(last["step_gb"] / first["step_gb"], 3)}))


if __name__ == "__main__":
    main()
