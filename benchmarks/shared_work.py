"""Shared work: one suite of 3 attacks over one model vs. the same 3 runs made separately, in one run.

    python benchmarks/shared_work.py [--model uformer] [--limit 8] [--defense none] [--batch-size 8]

Times four things, each with fresh result folders, best of --repeats:
- `separate_cli`: three `udcbench run` commands, one per attack (what a user without suites types);
- `suite_cli`: one `udcbench run --attack a,b,c` command (the planner shares the clean outputs — and, with a
  defense, the defended clean outputs — and runs the images in batches of --batch-size);
- `separate_api` / `suite_api`: the same through the Python API in this process (no interpreter start-up,
  model loading counted once per call), so the share of start-up in the CLI ratio is visible.
Prints a JSON line with the times, `ratio_cli` = suite_cli / separate_cli (target ≤ 0.5) and `ratio_api`; the
separate runs use the default batch size 1 unless --separate-batch-size is given. Results go into
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTACKS = (("fgsm", ["--eps", "8/255"]), ("pgd", ["--eps", "8/255", "--steps", "5"]),
           ("ifgsm", ["--eps", "8/255", "--steps", "5"]))


def cli(args: list[str]) -> None:
    subprocess.run([sys.executable, "-c", "from udcbench.cli import main; main()", "run", *args], check=True,
                   capture_output=True)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="uformer")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--defense", default="none")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--separate-batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from udcbench import api
    from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

    common = ["--model", args.model, "--defense", args.defense, "--limit", str(args.limit)]
    root = Path(tempfile.mkdtemp())

    def separate_cli():
        for name, params in ATTACKS:
            cli([*common, "--attack", name, *params, "--batch-size", str(args.separate_batch_size),
                 "--out", str(root / f"separate-{name}")])

    def suite_cli():  # eps and steps apply to the attacks that have them (fgsm takes no steps)
        cli([*common, "--attack", ",".join(n for n, _ in ATTACKS), "--eps", "8/255", "--steps", "5",
             "--batch-size", str(args.batch_size), "--out", str(root / "suite")])

    def spec(name, params, batch):
        values = dict(zip(params[::2], params[1::2]))
        return RunSpec(model=ModelSpec(args.model), defense=DefenseSpec(args.defense),
                       attack=AttackSpec.of(name, eps=values["--eps"], steps=int(values["--steps"])
                                            if "--steps" in values else None),
                       data=DataSpec("udc-mini", limit=args.limit), batch_size=batch)

    counts = {}

    def separate_api():
        for name, params in ATTACKS:
            api.run(spec(name, params, args.separate_batch_size))

    def suite_api():
        frame = api.run_suite([spec(name, params, args.batch_size) for name, params in ATTACKS])
        counts.update(frame.attrs["work"])

    results = {}
    for label, function in (("separate_cli", separate_cli), ("suite_cli", suite_cli), ("separate_api", separate_api),
                            ("suite_api", suite_api)):
        best = float("inf")
        for _ in range(args.repeats):
            shutil.rmtree(root, ignore_errors=True)
            best = min(best, timed(function))
        results[label] = round(best, 2)
    shutil.rmtree(root, ignore_errors=True)
    results.update(ratio_cli=round(results["suite_cli"] / results["separate_cli"], 3),
                   ratio_api=round(results["suite_api"] / results["separate_api"], 3),
                   clean_outputs_computed=counts["computed"].get("clean output"),
                   clean_outputs_reused=counts["reused"].get("clean output"), passes_saved=counts["saved"],
                   passes_run=counts["passes"], **{k: v for k, v in vars(args).items() if k != "repeats"})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
