"""Compiled attack loop: PGD through `Compiler.prepare`'s compiled model vs. eager, and the zoo's equality check.

    python benchmarks/compile.py [--models nafnet-nano,uformer-nano] [--batch 4] [--size 128] [--steps 20]
                                 [--repeats 3] [--threads N] [--device cpu]
    python benchmarks/compile.py --zoo [--models all] [--batch 1] [--size 64] [--repeats 2]

Default mode, per model (bundled weights; `--weights random` for the others), one JSON line with:
- `bare_forward_backward`: the eager network's forward + backward w.r.t. the input (as in attack_overhead.py),
  seconds per iterate; `pgd_eager` / `pgd_compiled`: udcbench's `make_attack("pgd", eps=8/255, steps=20)` on
  the eager model and on `outcome.model`, seconds per PGD iterate (steps + 1 per attack), best of --repeats
  after a warm-up;
- `ratio` = pgd_compiled / bare_forward_backward (target ≤ 0.6) and `ratio_eager` = pgd_eager / bare, in wall
  time; `cpu_seconds_per_step` and `ratio_cpu` / `ratio_eager_cpu` the same in process CPU time (steadier on a
  shared machine with --threads 1);
- `compile`: the Compiler's report (compile seconds = its first compiled calls, grad and no-grad; the probe's
  forward+backward times and their ratio; output and gradient errors; the fallback reason, if any);
- `objective`: the mean final objective (mse-clean) of both attacks' results, each scored by the eager model,
  and their relative difference (target ≤ 1e-4).
`--zoo`: every registered model (or --models) at a small size, through `Compiler.prepare` only: a line per
model with its verdict — "compiled" (equal within 1e-4 and faster), "slower" (equal, falls back), "differs"
or "failed" — then a summary line. That is the evidence for "the compiled path equals eager on every model".
Every line carries the date, the machine (CPU, threads, load average) and the torch version; the machine is
often shared, so compare ratios measured in the same run. Results go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.data import load_dataset
from udcbench.models import bundled_weights, load_model
from udcbench.models.compiled import Compiler
from udcbench.registry import MODELS


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": [round(v, 1) for v in os.getloadavg()]}


def weights_for(name: str) -> str | None:
    entry = MODELS.get(name)
    return None if entry.info.get("weights_free") or bundled_weights(name) else "random"


def extras_for(model, batch: int) -> dict:
    """The model's extra inputs (psf_code, psf) from udc-mini's first sample, repeated over the batch."""
    needed = model.contract.extra_inputs
    if not needed:
        return {}
    sample = load_dataset("udc-mini", limit=1)[0]
    return {k: v[None].expand(batch, *v.shape).contiguous() for k, v in sample.extras.items() if k in needed}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_iterate(fn, iterates: int, repeats: int, device: torch.device):
    """Warm-up, then the best of `repeats` timed calls divided by `iterates`: (wall seconds, process CPU
    seconds, last result). On a shared machine with one thread, the CPU time is the steadier of the two."""
    result = fn()
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        sync(device)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall / iterates, cpu / iterates, result


def attack_benchmark(name: str, args, device: torch.device) -> dict:
    """One model: eager bare forward+backward, PGD eager and compiled, compile report, final objectives."""
    model = load_model(name, weights=weights_for(name), device=device)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    extras = {k: v.to(device) for k, v in extras_for(model, args.batch).items()}
    eager = model.bind(**extras)
    iterates = args.steps + 1

    def bare():
        inputs = [extras[k] for k in model.contract.extra_inputs]
        for _ in range(iterates):
            net_input = x.clone().requires_grad_(True)
            torch.autograd.grad(model.net(net_input, *inputs).pow(2).mean(), net_input)

    bare_seconds, bare_cpu, _ = per_iterate(bare, iterates, args.repeats, device)
    outcome = Compiler(repeats=args.repeats).prepare(eager, tuple(x.shape), device)
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(eager(x), x)
    attack = make_attack("pgd", eps=8 / 255, steps=args.steps)

    def pgd(target):
        return lambda: attack.perturb(target, x, objective, reference, torch.Generator().manual_seed(0))

    pgd_eager, pgd_eager_cpu, adversarial_eager = per_iterate(pgd(eager), iterates, args.repeats, device)
    pgd_compiled, pgd_compiled_cpu, adversarial_compiled = per_iterate(pgd(outcome.model), iterates, args.repeats,
                                                                       device)
    with torch.no_grad():
        final_eager = objective(eager(adversarial_eager), reference).mean().item()
        final_compiled = objective(eager(adversarial_compiled), reference).mean().item()
    return {"model": name, "batch": args.batch, "size": args.size, "steps": args.steps, "device": str(device),
            "seconds_per_step": {"bare_forward_backward": round(bare_seconds, 4), "pgd_eager": round(pgd_eager, 4),
                                 "pgd_compiled": round(pgd_compiled, 4)},
            "cpu_seconds_per_step": {"bare_forward_backward": round(bare_cpu, 4), "pgd_eager": round(pgd_eager_cpu, 4),
                                     "pgd_compiled": round(pgd_compiled_cpu, 4)},
            "ratio": round(pgd_compiled / bare_seconds, 3), "ratio_eager": round(pgd_eager / bare_seconds, 3),
            "ratio_cpu": round(pgd_compiled_cpu / bare_cpu, 3), "ratio_eager_cpu": round(pgd_eager_cpu / bare_cpu, 3),
            "compiled": outcome.compiled, "warning": outcome.warning, "compile": outcome.report(),
            "objective": {"eager": float(f"{final_eager:.7g}"), "compiled": float(f"{final_compiled:.7g}"),
                          "relative_difference": float(f"{abs(final_compiled - final_eager) / abs(final_eager):.2e}"),
                          "adversarial_max_difference": float(
                              f"{(adversarial_compiled - adversarial_eager).abs().max().item():.2e}")},
            "machine": machine()}


def zoo(names: list[str], args, device: torch.device) -> None:
    """Every model: compile, check equality within 1e-4 and time; one JSON line each, then a summary."""
    compiler = Compiler(repeats=args.repeats)
    verdicts: dict[str, list[str]] = {}
    for name in names:
        started = time.perf_counter()
        model = load_model(name, weights=weights_for(name), device=device)
        extras = extras_for(model, args.batch)
        outcome = compiler.prepare(model.bind(**extras) if extras else model,
                                   (args.batch, 3, args.size, args.size), device)
        verdicts.setdefault(outcome.verdict, []).append(name)
        print(json.dumps({"zoo": name, **outcome.report(),
                          "warning": outcome.warning, "seconds": round(time.perf_counter() - started, 1),
                          "machine": machine()}), flush=True)
        del model, outcome
    equal = sum(len(verdicts.get(k, [])) for k in ("compiled", "slower"))
    print(json.dumps({"zoo_summary": verdicts, "equal_within_tolerance": f"{equal}/{len(names)}",
                      "batch": args.batch, "size": args.size, "machine": machine()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated; default nafnet-nano,uformer-nano "
                        "(--zoo: every registered model)")
    parser.add_argument("--zoo", action="store_true")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (--zoo: 1)")
    parser.add_argument("--size", type=int, default=None, help="default 128 (--zoo: 64)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.batch = args.batch or (1 if args.zoo else 4)
    args.size = args.size or (64 if args.zoo else 128)
    if args.zoo:
        names = MODELS.names() if args.models in (None, "all") else args.models.split(",")
        zoo(names, args, device)
        return
    for name in (args.models or "nafnet-nano,uformer-nano").split(","):
        print(json.dumps(attack_benchmark(name, args, device)), flush=True)


if __name__ == "__main__":
    main()
