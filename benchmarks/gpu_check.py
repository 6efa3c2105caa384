"""The GPU check: everything udcbench promises on CUDA, measured in one run and recorded with the GPU's name and
the date in benchmarks/RESULTS.md. Run it on a CUDA machine from the repository root:

    python benchmarks/gpu_check.py [--quick] [--no-record]

Steps (each prints one JSON line; on one H200 the whole check takes a few minutes, `--quick` less):
1. tests: the CUDA test subset, `python -m pytest -q -m cuda` (tests that skip without a GPU).
2. precision: the same udcbench runs (nafnet-nano and uformer-nano, PGD 8/255 × 20 steps, 8 udc-mini images) in
   fp32 and with `--precision bf16`; the largest |ΔPSNR| of the clean, attacked and attacked-vs-clean columns
   must stay within BF16_TOLERANCE dB.
3. speed: seconds per PGD step of batch 4 × 3 × 128² for nafnet-nano and uformer-nano — the bare network's
   forward + backward, udcbench's PGD eager, and udcbench's PGD on the network `--compile` prepares (compile
   time reported apart, the final objective compared with eager).
4. memory: peak CUDA memory and time of one white-box step (forward + backward w.r.t. the input, random
   weights) for restormer, uformer-b and nafnet-w32 at 256², 512² and 800² (Uformer pads 800 to 896), plain
   and with `--memory low` (activation checkpointing), and the ratios.
5. record: a dated section with the GPU's name is appended to benchmarks/RESULTS.md (unless --no-record).
Without CUDA it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BF16_TOLERANCE = 0.5  # dB: bf16 keeps ~3 significant digits; PGD's sign steps amplify little of it
SPEED_MODELS = ("nafnet-nano", "uformer-nano")
MEMORY_MODELS = ("restormer", "uformer-b", "nafnet-w32")
SIDES = (256, 512, 800)


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def run_tests() -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True)
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    return emit({"step": "tests", "exit_code": done.returncode, "summary": tail,
                 "seconds": round(time.perf_counter() - started, 1)})


def precision(images: int) -> dict:
    from udcbench import api
    from udcbench.spec import AttackSpec, DataSpec, ModelSpec, RunSpec

    worst = {}
    for model in SPEED_MODELS:
        spec = RunSpec(model=ModelSpec(model), attack=AttackSpec.of("pgd", eps="8/255", steps=20),
                       data=DataSpec(limit=images), device="cuda")
        fp32 = api.run(spec)
        bf16 = api.run(RunSpec(**{**spec.__dict__, "precision": "bf16"}))
        for column in ("psnr_clean_gt", "psnr_adv_gt", "psnr_adv_clean"):
            worst[f"{model} {column}"] = round(float((fp32[column] - bf16[column]).abs().max()), 4)
    largest = max(worst.values())
    return emit({"step": "precision", "images": images, "max_abs_dpsnr": worst, "largest": largest,
                 "tolerance_db": BF16_TOLERANCE, "passed": largest <= BF16_TOLERANCE})


def _seconds(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def speed(steps: int) -> list[dict]:
    from udcbench.attacks import make_attack, make_objective
    from udcbench.models import load_model
    from udcbench.models.compiled import Compiler

    records, compiler = [], Compiler()
    for name in SPEED_MODELS:
        model = load_model(name, device="cuda")
        x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0)).cuda()
        objective = make_objective("mse-clean")
        with torch.no_grad():
            reference = objective.reference(model(x), x)
        attack = make_attack("pgd", eps=8 / 255, steps=steps)

        def bare():
            inp = x.clone().requires_grad_(True)
            torch.autograd.grad(model.net(inp).pow(2).mean(), inp)

        def pgd(net):
            return lambda: attack.perturb(net, x, objective, reference, torch.Generator().manual_seed(0))

        outcome = compiler.prepare(model, tuple(x.shape), "cuda")
        eager_adv, compiled_adv = pgd(model)(), pgd(outcome.model)()
        with torch.no_grad():
            eager_obj = float(objective(model(eager_adv), reference).mean())
            compiled_obj = float(objective(model(compiled_adv), reference).mean())
        per_step = steps + 1
        records.append(emit({
            "step": "speed", "model": name, "input": "4x3x128x128", "bare_fwd_bwd_s": round(_seconds(bare), 5),
            "pgd_eager_s_per_step": round(_seconds(pgd(model), 2) / per_step, 5),
            "pgd_compiled_s_per_step": round(_seconds(pgd(outcome.model), 2) / per_step, 5),
            "compile": outcome.report(), "objective_eager": eager_obj, "objective_compiled": compiled_obj,
            "objective_rel_diff": abs(compiled_obj - eager_obj) / max(abs(eager_obj), 1e-12)}))
    return records


def memory(sides) -> list[dict]:
    from udcbench.models import load_model
    from udcbench.models.memory import set_checkpointing

    records = []
    for name in MEMORY_MODELS:
        model = load_model(name, weights="random", device="cuda")
        for side in sides:
            row = {"step": "memory", "model": name, "side": side}
            for mode in ("normal", "low"):
                set_checkpointing(model, mode == "low")
                x = torch.rand(1, 3, side, side, device="cuda")
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                try:
                    def step():
                        inp = x.clone().requires_grad_(True)
                        torch.autograd.grad(model(inp).pow(2).mean(), inp)

                    row[f"{mode}_s"] = round(_seconds(step, 2), 4)
                    row[f"{mode}_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
                except torch.cuda.OutOfMemoryError:
                    row[f"{mode}_peak_gb"] = "out of memory"
            set_checkpointing(model, False)
            if all(isinstance(row.get(f"{m}_peak_gb"), float) for m in ("normal", "low")):
                row["memory_ratio"] = round(row["low_peak_gb"] / row["normal_peak_gb"], 3)
                row["time_ratio"] = round(row["low_s"] / row["normal_s"], 3)
            records.append(emit(row))
        del model
        torch.cuda.empty_cache()
    return records


def record(results: list[dict]) -> None:
    name = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    lines = [f"\n## GPU check, {date}, {name} (`benchmarks/gpu_check.py`)\n",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}. One JSON record per step:\n", "```"]
    lines += [json.dumps(r) for r in results] + ["```", ""]
    with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps, sides 256 and 512 only")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: this torch sees no CUDA GPU; run it on a CUDA machine", file=sys.stderr)
        return 2
    results = [run_tests(), precision(4 if args.quick else 8)]
    results += speed(5 if args.quick else 20)
    results += memory(SIDES[:2] if args.quick else SIDES)
    if not args.no_record:
        record(results)
    return 0 if results[0]["exit_code"] in (0, 5) and results[1]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
