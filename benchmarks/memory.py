"""Peak memory and time of one white-box PGD step, plain vs. activation checkpointing (`--memory low`).

    python benchmarks/memory.py [--models restormer,uformer-b,nafnet-w32] [--sizes 256,512,800] [--cap-gb 14]
                                [--threads 2] [--steps 2]

Each configuration (model × size × mode) runs in its own subprocess whose address space is capped at --cap-gb
(RLIMIT_AS), so a configuration that does not fit fails alone instead of taking the machine down. The child
loads the model with random weights, then runs --steps white-box PGD steps on one random image (forward,
MSE to a random target, gradient w.r.t. the input, signed step, projection). It reports its peak RSS
(getrusage ru_maxrss, as `/usr/bin/time -v` would), its RSS before the first step (torch + parameters) and the
wall and CPU time of the last step (the first one also builds the oneDNN kernels for the new shapes).
Both modes run with glibc's mmap threshold fixed at --malloc-threshold (128 KiB: what a `udcbench run` sets for
checkpointed and memory-bound CPU runs; 0 keeps glibc's dynamic threshold, which lets freed blocks inflate the
peak RSS), and with torch's transparent-huge-page advice that importing udcbench turns on (run the script with
THP_MEM_ALLOC_ENABLE=0 to measure without it).

Before measuring, one child per model probes the library's estimate (`udcbench.models.memory.probe`: two
small sizes, extrapolated by pixel count). A configuration whose estimate — its address space before the step
plus the estimated step, +15 % — exceeds the cap, or whose estimated RSS exceeds what the machine has
available minus 2 GB, is skipped and says so. The same child also reports what `choose(..., mode="auto")`
answers under the cap for every size: "normal", "low", or the up-front refusal naming the size that fits.

Prints JSON lines: one per probe, one per configuration, one with the low/plain ratios per model and size
(`rss_ratio`: peak RSS of the process; `step_ratio`: peak RSS minus the RSS before the step; `wall_ratio`,
`cpu_ratio`: time of one warm step). Targets (issue): at 512², rss_ratio ≤ 0.35 and wall_ratio ≤ 1.4. The
estimate's accuracy is `estimate_gb` (the step, parameters excluded) against `step_gb`.
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


def _status(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))


def _load(name: str, threads: int):
    import torch

    from udcbench.models import load_model

    torch.set_num_threads(threads)
    return load_model(name, weights="random")


def child_probe(name: str, sizes: list[int], threads: int) -> dict:
    """The library's estimates (step bytes beyond the loaded model) and its choice under this process's cap."""
    from udcbench.errors import SpecError
    from udcbench.models import memory

    model = _load(name, threads)
    baseline = {"vm_gb": _status("VmSize") / GB, "rss_gb": _status("VmRSS") / GB}
    start = time.perf_counter()
    profile = memory.probe(model)
    estimates = {}
    for side in sizes:
        est = profile.estimate((3, side, side))
        estimates[side] = {"plain_gb": est.need("normal") / GB, "low_gb": est.need("low") / GB}
    probe_s = time.perf_counter() - start
    choices = {}
    for side in sizes:
        try:
            choices[side] = memory.choose(model, [(3, side, side)], mode="auto")
        except SpecError as error:
            choices[side] = f"refused: {error}"
    return {"kind": "probe", "model": name, "parameters_gb": profile.parameters / GB, "probe_s": round(probe_s, 1),
            "fits": {m: vars(f) for m, f in profile.fits.items()}, "baseline": baseline, "estimates": estimates,
            "available_gb_under_cap": memory.available_bytes("cpu") / GB, "choice_under_cap": choices}


def child_step(name: str, side: int, mode: str, threads: int, steps: int) -> dict:
    """`steps` white-box PGD steps (ε = 8/255, α = 2/255) at side×side, plain or checkpointed."""
    import torch

    from udcbench.models import memory

    model = _load(name, threads)
    memory.set_checkpointing(model, mode == "low")
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, side, side, generator=generator)
    target = torch.rand(1, 3, side, side, generator=generator)
    rss_before = _status("VmRSS")
    adversarial, times = clean.clone(), []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        adversarial.requires_grad_(True)
        loss = torch.nn.functional.mse_loss(model(adversarial), target)
        (gradient,) = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            adversarial = adversarial + 2 / 255 * gradient.sign()
            adversarial = (clean + (adversarial - clean).clamp(-8 / 255, 8 / 255)).clamp(0, 1)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": "step", "model": name, "side": side, "mode": mode, "threads": threads,
            "peak_rss_gb": peak / GB, "rss_before_gb": rss_before / GB, "step_gb": (peak - rss_before) / GB,
            "wall_s": round(times[-1][0], 2), "cpu_s": round(times[-1][1], 2), "first_wall_s": round(times[0][0], 2),
            "gradient_abs_sum": float(gradient.abs().sum())}


def spawn(args: list[str], cap: int, malloc_threshold: int = 0) -> dict:
    """Run this script as a child with its address space capped; its last stdout line is JSON.
    malloc_threshold > 0: glibc's mmap threshold fixed at that many bytes in the child (MALLOC_MMAP_THRESHOLD_)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(malloc_threshold)} if malloc_threshold else {})}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, preexec_fn=limit,
                          env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"kind": "failed", "args": args, "returncode": done.returncode, "error": tail[-300:],
                "seconds": round(time.perf_counter() - start, 1)}
    return json.loads(lines[-1])


def _mem_available() -> int:
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))


def _machine(args: argparse.Namespace) -> dict:
    import platform

    import torch

    with open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    with open("/proc/meminfo") as handle:
        total = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemTotal:"))
    return {"kind": "machine", "date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cores": os.cpu_count(),
            "threads": args.threads, "malloc_threshold": args.malloc_threshold, "mem_total_gb": round(total / GB, 1), "torch": torch.__version__,
            "python": platform.python_version(), "cap_gb": args.cap_gb, "load_average": os.getloadavg()}


def _emit(record: dict) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


def _skip_reason(probe: dict, side: int, mode: str, cap: int) -> str | None:
    need = probe["estimates"][side][f"{mode}_gb"] * GB
    if probe["baseline"]["vm_gb"] * GB + 1.15 * need > cap:
        return (f"estimated {need / GB:.1f} GB step + {probe['baseline']['vm_gb']:.1f} GB address space before it "
                f"exceed the {cap / GB:.0f} GB cap")
    if probe["baseline"]["rss_gb"] * GB + 1.15 * need > _mem_available() - 2 * GB:
        return f"estimated {need / GB:.1f} GB step exceeds what this machine has available now minus 2 GB"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="restormer,uformer-b,nafnet-w32")
    parser.add_argument("--sizes", default="256,512,800")
    parser.add_argument("--cap-gb", type=float, default=14.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--malloc-threshold", type=int, default=128 * 1024,
                        help="glibc mmap threshold in both modes (what --memory low sets; 0: glibc's default)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, name, *rest = args.child
        sizes = [int(s) for s in args.sizes.split(",")]
        result = (child_probe(name, sizes, args.threads) if kind == "probe"
                  else child_step(name, int(rest[0]), rest[1], args.threads, args.steps))
        print(json.dumps(result, ensure_ascii=False), flush=True)
        return
    cap = int(args.cap_gb * GB)
    _emit(_machine(args))
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--sizes", args.sizes]
    for name in args.models.split(","):
        probe = spawn(["--child", "probe", name, *common], cap)
        _emit(probe)
        if probe["kind"] != "probe":
            continue
        probe["estimates"] = {int(k): v for k, v in probe["estimates"].items()}
        for side in (int(s) for s in args.sizes.split(",")):
            results = {}
            for mode in ("plain", "low"):
                reason = _skip_reason(probe, side, mode, cap)
                if reason:
                    _emit({"kind": "skipped", "model": name, "side": side, "mode": mode, "reason": reason})
                    continue
                result = spawn(["--child", "step", name, str(side), mode, *common], cap, args.malloc_threshold)
                result["estimate_gb"] = probe["estimates"][side][f"{mode}_gb"]
                _emit(result)
                if result["kind"] == "step":
                    results[mode] = result
            if len(results) == 2:
                plain, low = results["plain"], results["low"]
                _emit({"kind": "ratio", "model": name, "side": side,
                       "rss_ratio": round(low["peak_rss_gb"] / plain["peak_rss_gb"], 3),
                       "step_ratio": round(low["step_gb"] / plain["step_gb"], 3),
                       "wall_ratio": round(low["wall_s"] / plain["wall_s"], 3),
                       "cpu_ratio": round(low["cpu_s"] / plain["cpu_s"], 3),
                       "same_gradient": low["gradient_abs_sum"] == plain["gradient_abs_sum"]})


if __name__ == "__main__":
    main()
