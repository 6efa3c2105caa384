"""Black-box throughput: SimBA (pixel and DCT bases, 1,000 iterations at 4/255) and Square (1,000 queries at
8/255) on one batch of udc-mini images, the current implementation against a reference revision of it, in one
run, with the floor the forward passes set.

    python benchmarks/blackbox.py [--model uformer-nano] [--images 4] [--reference 350adf5] [--iterations 1000]
                                  [--queries 1000] [--attacks simba-pixel,simba-dct,square] [--device cpu]
                                  [--old-batch B] [--compile]

The reference implementation is read from git (`git show REV:udcbench/attacks/{simba,square}.py`, default: the
revision before the inference-mode change) and executed as a private module, so old and new run on the same
model, images, objective (mse-clean) and seed in this process. Prints JSON lines:
- first, `"what": "forward"`: the batched forward pass (inference mode, best of 10 after a warm-up):
  `forward_batch_s` for all --images images, `forward_single_s` for one image, `forward_per_query_s` =
  forward_batch_s / images (the floor per query: one image's share of a full-batch pass; --compile: of the
  compiled one);
- then one line per attack: `old_s` / `new_s` (wall seconds of one attack on the batch, reference first),
  `old_cpu_s` / `new_cpu_s` (process CPU seconds, steadier on a shared machine), `ratio` = new_s / old_s
  (target ≤ 0.5), `queries` (the batch's total, from the new run), `forward_calls` and `forward_s` (the calls
  into the model and the wall time inside them, new run), `old_outside_s` / `new_outside_s` (wall time
  outside the model calls: the attack's own work), `floor_s` = queries × forward_per_query_s (every
  query in a full-batch pass), `floor_ratio` = floor_s / old_s (the lowest ratio the same queries allow),
  `floor_single_s` = queries × forward_single_s (the same queries one image at a time, as --batch-size 1), and
  `identical`: adversarial examples equal (torch.equal) and per-image query counts equal for the same seed.
`--old-batch 1` runs the reference one image at a time (as `udcbench run` does with its default
`--batch-size 1`) while the new implementation gets the whole batch (`--batch-size 4`); each image then draws
its own random order, so `identical` is only checked when both runs see the same batches.
`--compile` runs the new implementation on the network compiled for the batch (`udcbench run --compile`:
`Compiler.prepare`, whose inference-mode graph the queries use); its compile time and check are printed on the
first line (`compile`), apart from the attacks' wall times; `forward_compiled_batch_s` is the compiled batched
forward, and the floor uses it. Compiled outputs equal eager ones within 1e-4 relative, not bit for bit, so a
query's accept/reject decision can flip and `identical` (when checked) may be false.
Results go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import types
from datetime import date
from pathlib import Path
from unittest import mock

import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.data.datasets import load_dataset
from udcbench.models import load_model
from udcbench.models.compiled import Compiler

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "350adf5"  # the last revision before the inference-mode change of simba.py and square.py


def reference_module(path: str, revision: str) -> types.ModuleType:
    """`path` as it was at `revision`, executed as a private module (its attacks are not registered)."""
    source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    module = types.ModuleType(f"reference_{Path(path).stem}")
    with mock.patch("udcbench.registry.register_attack", lambda *args, **kwargs: (lambda factory: factory)):
        exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def attacks(args) -> dict[str, tuple]:
    """name -> (new attack, reference attack): the same parameters, built by the registry and by the module."""
    simba = reference_module("udcbench/attacks/simba.py", args.reference)
    square = reference_module("udcbench/attacks/square.py", args.reference)
    made = {"simba-pixel": make_attack("simba", eps=4 / 255, iterations=args.iterations, basis="pixel"),
            "simba-dct": make_attack("simba", eps=4 / 255, iterations=args.iterations, basis="dct"),
            "square": make_attack("square", eps=8 / 255, queries=args.queries)}
    classes = {"simba-pixel": simba.SimBA, "simba-dct": simba.SimBA, "square": square.SquareLinf}
    return {name: (made[name], classes[name](**made[name].params)) for name in args.attacks.split(",")}


class TimedModel(torch.nn.Module):
    """Counts the calls into the model and the wall time spent inside them."""

    def __init__(self, model, sync):
        super().__init__()
        self.model, self.sync, self.calls, self.seconds = model, sync, 0, 0.0

    def forward(self, x):
        started = time.perf_counter()
        out = self.model(x)
        self.sync()
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out


def best_time(function, repeats: int = 10) -> float:
    function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="uformer-nano")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--reference", default=REFERENCE, help="git revision of the reference implementation")
    parser.add_argument("--iterations", type=int, default=1000, help="SimBA iterations")
    parser.add_argument("--queries", type=int, default=1000, help="Square queries")
    parser.add_argument("--attacks", default="simba-pixel,simba-dct,square")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--old-batch", type=int, default=None,
                        help="images per call of the reference attack (default: all, like the new one)")
    parser.add_argument("--compile", action="store_true", help="the new implementation on the compiled network")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model = load_model(args.model, device=device)  # bundled weights
    samples = [sample for sample in load_dataset("udc-mini", limit=args.images)]
    degraded = torch.stack([s.degraded for s in samples]).to(device)
    gt = torch.stack([s.gt for s in samples]).to(device)
    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(degraded), gt, degraded)
    new_model, timings = forward_timings(model, degraded, args.compile, device, sync)
    per_query = timings.get("forward_compiled_batch_s", timings["forward_batch_s"]) / degraded.shape[0]
    common = {"date": date.today().isoformat(), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device": str(device), "model": args.model, "input": "×".join(map(str, degraded.shape))}
    print(json.dumps({"what": "forward", **common, **timings, "forward_per_query_s": round(per_query, 4),
                      "load_average": os.getloadavg()[0]}), flush=True)
    old_batch = args.old_batch or len(degraded)
    for name, (new, old) in attacks(args).items():
        old_s, old_cpu, old_adv, old_q, old_timed = timed_attack(old, TimedModel(model, sync), degraded, objective,
                                                                 reference, old_batch, args.seed, sync)
        new_s, new_cpu, new_adv, new_q, timed = timed_attack(new, TimedModel(new_model, sync), degraded, objective,
                                                             reference, len(degraded), args.seed, sync)
        queries = int(new_q.sum())
        print(json.dumps({
            "what": name, **common, "params": new.params, "old_s": round(old_s, 2), "new_s": round(new_s, 2),
            "old_cpu_s": round(old_cpu, 2), "new_cpu_s": round(new_cpu, 2), "ratio": round(new_s / old_s, 3),
            "queries": queries, "forward_calls": timed.calls, "forward_s": round(timed.seconds, 2),
            "old_outside_s": round(old_s - old_timed.seconds, 2), "new_outside_s": round(new_s - timed.seconds, 2),
            "floor_s": round(queries * per_query, 2), "floor_ratio": round(queries * per_query / old_s, 3),
            "floor_single_s": round(queries * timings["forward_single_s"], 2),
            "old_batch": old_batch, "compiled": bool(args.compile),
            "identical": (bool(torch.equal(old_adv, new_adv) and torch.equal(old_q, new_q))
                          if old_batch == len(degraded) else None),
            "load_average": os.getloadavg()[0]}), flush=True)


def forward_timings(model, degraded, compile_: bool, device, sync) -> tuple:
    """(the model the new implementation runs, timings): the eager batched and single-image forward passes in
    inference mode and, with compile_, the Compiler's report and the compiled batched forward."""
    def forward(net, x):
        def run():
            with torch.inference_mode():
                net(x)
            sync()
        return run

    timings = {"forward_batch_s": round(best_time(forward(model, degraded)), 4),
               "forward_single_s": round(best_time(forward(model, degraded[:1])), 4)}
    if not compile_:
        return model, timings
    outcome = Compiler().prepare(model, tuple(degraded.shape), device)
    timings["compile"] = outcome.report()
    if outcome.compiled:
        timings["forward_compiled_batch_s"] = round(best_time(forward(outcome.model, degraded)), 4)
    return outcome.model, timings


def timed_attack(attack, timed, degraded, objective, reference, step: int, seed: int, sync) -> tuple:
    """One attack over the images, `step` images per call, each call seeded alike: (wall s, CPU s, adversarial
    examples, per-image queries, the TimedModel)."""
    started, cpu = time.perf_counter(), time.process_time()
    adversarial, queries = [], []
    for first in range(0, len(degraded), step):
        chunk = slice(first, first + step)
        generator = torch.Generator().manual_seed(seed)
        adversarial.append(attack.perturb(timed, degraded[chunk], objective, reference[chunk], generator))
        queries.append(attack.last_queries.clone())
    sync()
    return (time.perf_counter() - started, time.process_time() - cpu, torch.cat(adversarial).cpu(),
            torch.cat(queries), timed)

if __name__ == "__main__":
    main()
