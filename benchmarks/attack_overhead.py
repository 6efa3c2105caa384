"""PGD overhead: time per PGD step through udcbench vs. the bare network's forward+backward, and vs. advertorch's
PGD at equal budget, in one run.

    python benchmarks/attack_overhead.py [--model uformer-nano] [--size 128] [--batch 1] [--steps 20] [--device cpu]

Prints a JSON line with the times and their ratios:
- `ratio`: udcbench PGD / bare forward+backward; the target is ≤ 1.05 (the wrapper, projection and best-iterate
  bookkeeping may add at most 5 % to the network's own cost).
- `ratio_vs_advertorch`: udcbench PGD / advertorch's LinfPGDAttack (`advertorch:pgd`, the `xcheck` extra) with the
  same eps (8/255), alpha (eps/4), steps, random start and seed (target ≤ 0.9); `mean_objective` gives the final objective of
  both, to show the speed is not bought with strength (native keeps the best iterate, advertorch the last;
  for that, native also scores the start and the final iterate: 2 forwards more than advertorch's `steps`).
  Without advertorch this part is skipped and the `advertorch` key says why.
Times are per PGD iterate (steps + 1 for each attack), best of --repeats after a warm-up.
Results go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from udcbench.attacks import make_attack, make_objective
from udcbench.attacks.backends import unavailable_reason
from udcbench.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="uformer-nano")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_model(args.model, weights="random" if args.model != "uformer-nano" else None, device=device)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def bare_steps():
        for _ in range(args.steps + 1):  # PGD evaluates steps + 1 iterates
            inp = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model.net(inp).pow(2).mean(), inp)
        sync()

    objective = make_objective("mse-clean")
    with torch.no_grad():
        reference = objective.reference(model(x), x)
    budget = {"eps": 8 / 255, "alpha": 2 / 255, "steps": args.steps, "random_start": True}
    attacks = {"udcbench_pgd": make_attack("pgd", **budget)}
    skipped = unavailable_reason("advertorch")
    if skipped is None:
        attacks["advertorch_pgd"] = make_attack("advertorch:pgd", **budget)

    def run(attack):
        def fn():
            adversarial = attack.perturb(model, x, objective, reference, torch.Generator().manual_seed(0))
            sync()
            return adversarial
        return fn

    timings, objectives = {}, {}
    for name, fn in (("bare_forward_backward", bare_steps), *((k, run(a)) for k, a in attacks.items())):
        adversarial = fn()  # warm-up
        if name in attacks:
            with torch.no_grad():
                objectives[name] = objective(model(adversarial), reference).mean().item()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best / (args.steps + 1)
    result = {"model": args.model, "size": args.size, "batch": args.batch, "device": str(device),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "seconds_per_step": {k: round(v, 5) for k, v in timings.items()},
              "ratio": round(timings["udcbench_pgd"] / timings["bare_forward_backward"], 3)}
    if skipped is None:
        result["ratio_vs_advertorch"] = round(timings["udcbench_pgd"] / timings["advertorch_pgd"], 3)
        result["mean_objective"] = {k: float(f"{v:.6g}") for k, v in objectives.items()}
    else:
        result["advertorch"] = f"skipped: {skipped}"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
