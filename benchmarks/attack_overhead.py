"""PGD overhead: time per PGD step through udcbench vs. the bare network's forward+backward, in one run.

    python benchmarks/attack_overhead.py [--model uformer-nano] [--size 128] [--batch 1] [--steps 20] [--device cpu]

Prints a JSON line with both times and their ratio; the target is a ratio ≤ 1.3 (the wrapper, projection and
best-iterate bookkeeping may add at most 30 % to the network's own cost). Results go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from udcbench.attacks import make_attack, make_objective
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
    attack = make_attack("pgd", eps=8 / 255, steps=args.steps)

    def pgd():
        attack.perturb(model, x, objective, reference, torch.Generator().manual_seed(0))
        sync()

    timings = {}
    for name, fn in (("bare_forward_backward", bare_steps), ("udcbench_pgd", pgd)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best / (args.steps + 1)
    print(json.dumps({"model": args.model, "size": args.size, "batch": args.batch, "device": str(device),
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "seconds_per_step": {k: round(v, 5) for k, v in timings.items()},
                      "ratio": round(timings["udcbench_pgd"] / timings["bare_forward_backward"], 3)}))


if __name__ == "__main__":
    main()
