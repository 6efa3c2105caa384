"""Several ε in one pass: the PGD runs of 4 ε as one K·B batch (`--eps-batch`) vs. the same 4 runs separately.

    python benchmarks/eps_batch.py [--model nafnet-nano] [--limit 4] [--steps 20] [--batch-size 1]
                                   [--eps 1/255,2/255,4/255,8/255] [--device cpu] [--threads N]

Both plans run in this process through the Python API (`api.run_suite`, results in memory), separate first,
each timed once after a warm-up run of one image. Prints one JSON line: `separate_s`, `stacked_s`, `ratio` =
stacked / separate, and how the rows compare — `identical_rows` (every stored metric equal bit for bit),
`rows_differing` and `max_abs_dpsnr` (dB) over the attacked-PSNR columns. A larger batch changes the floats'
summation order, which can flip the sign of a near-zero gradient entry, so a few rows may differ in the last
digits (that is why the stack size is part of a run's identity). Results go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date

import torch

from udcbench import api
from udcbench.runner.suite import Suite
from udcbench.spec import AttackSpec, DataSpec, ModelSpec

METRICS = ["psnr_clean_gt", "psnr_adv_gt", "ssim_adv_gt", "psnr_adv_clean", "ssim_adv_clean", "linf", "l2",
           "objective_adv"]


def plan(args, eps_batch: bool, limit: int) -> list:
    return Suite(models=[ModelSpec(args.model)], data=[DataSpec(limit=limit)],
                 attacks=[AttackSpec.of("pgd", eps=e, steps=args.steps) for e in args.eps.split(",")],
                 eps_batch=eps_batch, batch_size=args.batch_size, device=args.device).specs()


def timed(specs):
    started = time.perf_counter()
    frame = api.run_suite(specs)
    return time.perf_counter() - started, frame.sort_values(["eps", "image"]).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nafnet-nano")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--eps", default="1/255,2/255,4/255,8/255")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for eps_batch in (False, True):  # warm-up: model load, kernels for both batch shapes
        api.run_suite(plan(args, eps_batch, 1))
    separate_s, separate = timed(plan(args, False, args.limit))
    stacked_s, stacked = timed(plan(args, True, args.limit))
    differing = (separate[METRICS] != stacked[METRICS]).any(axis=1)
    print(json.dumps({
        "date": date.today().isoformat(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "device": args.device, "model": args.model, "images": args.limit,
        "steps": args.steps, "eps": args.eps, "batch_size": args.batch_size,
        "separate_s": round(separate_s, 2), "stacked_s": round(stacked_s, 2), "ratio": round(stacked_s / separate_s, 3),
        "rows": len(separate), "identical_rows": int((~differing).sum()), "rows_differing": int(differing.sum()),
        "max_abs_dpsnr": float((separate["psnr_adv_gt"] - stacked["psnr_adv_gt"]).abs().max()),
        "load_average": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
