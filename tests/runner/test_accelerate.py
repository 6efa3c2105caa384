"""--memory and --compile as a run applies them (udcbench/runner/accelerate.py): decided before anything is
written, never changing a number (memory) or never sharing a row with eager runs (compile).

Real peaks and compile speed are measured by benchmarks/memory.py and benchmarks/compile.py, not here."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import udcbench.models.compiled as compiled
from udcbench import AttackSpec, DataSpec, ModelSpec, RunSpec, api
from udcbench.cli import app
from udcbench.errors import SpecError
from udcbench.models import memory

METRICS = ["psnr_clean_gt", "psnr_adv_gt", "ssim_adv_gt", "l2", "objective_adv"]


def spec(**changes):
    base = RunSpec(model=ModelSpec("nafnet-nano"), attack=AttackSpec.of("pgd", eps="8/255", steps=2),
                   data=DataSpec(limit=2))
    return dataclasses.replace(base, **changes)


def test_auto_keeps_a_small_run_plain_and_low_checkpoints_with_identical_rows():
    auto = api.prepare(spec())
    assert not memory.is_checkpointing(auto.model) and auto.notes == []
    low = api.prepare(spec(memory="low"))
    assert memory.is_checkpointing(low.model)
    assert low.notes and low.notes[0].startswith("memory (low): nafnet-nano blocks checkpointed")
    assert low.run_hash == auto.run_hash  # memory never changes a number, so it is not hashed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical with one thread (see tests/models/test_memory.py)
    try:
        plain, checkpointed = api.run(spec(memory="normal")), api.run(spec(memory="low"))
    finally:
        torch.set_num_threads(threads)
    assert plain[METRICS].equals(checkpointed[METRICS])


def test_checkpointed_and_memory_bound_cpu_runs_return_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "return_freed_memory", lambda: calls.append(1) or True)
    api.prepare(spec(memory="normal"))  # a small plain step: glibc's default (faster) settings
    assert calls == []
    api.prepare(spec(memory="low"))  # checkpointed: peak RSS near the estimate
    assert calls == [1]
    model = api.prepare(spec(memory="normal")).model
    plain = memory.probe(model).estimate((3, 128, 128)).need("normal")
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": int(plain / 0.3))  # step > 25 %, fits
    api.prepare(spec(memory="normal"))
    assert calls == [1, 1]


def test_importing_udcbench_asks_torch_for_huge_pages_unless_told_otherwise():
    code = "import os, udcbench; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def imported(extra: dict) -> str:
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert imported({}) == "1" and imported({"THP_MEM_ALLOC_ENABLE": "0"}) == "0"


def test_auto_checkpoints_when_a_plain_step_would_not_fit_and_refuses_when_nothing_fits(monkeypatch):
    model = api.prepare(spec(memory="normal")).model
    need = memory.probe(model).estimate((3, 128, 128))
    between = int((need.need("normal") + need.need("low")) / 2 / memory.MARGIN)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": between)
    job = api.prepare(spec())
    assert memory.is_checkpointing(job.model) and job.notes[0].startswith("memory (auto):")
    with pytest.raises(SpecError, match="with --memory normal .*use --memory low"):
        api.prepare(spec(memory="normal"))
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1000)
    with pytest.raises(SpecError, match=r"even with --memory low .*not even a small image fits"):
        api.prepare(spec())


def test_a_refusal_on_the_command_line_is_one_line_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1000)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", "nafnet-nano", "--attack", "pgd", "--steps", "1",
                                      "--limit", "1", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "nafnet-nano needs ≈" in result.output and "Traceback" not in result.output
    assert not out.exists()


def _timings(monkeypatch, ratio):
    times = iter([1.0, ratio] * 8)  # eager, compiled for every shape probed
    monkeypatch.setattr(compiled, "_best_time", lambda fn, repeats, device: (fn(), next(times))[1])


def test_compile_labels_and_hashes_the_run_and_scores_as_eager(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: net)
    _timings(monkeypatch, 0.5)
    job = api.prepare(spec(compile=True, batch_size=2))
    eager = api.prepare(spec(batch_size=2))
    assert isinstance(job.model.net, compiled.CompiledNet) and job.model.net.variants
    assert job.labels["backend"] == "compiled" and eager.labels["backend"] is None
    assert job.run_hash != eager.run_hash  # within float tolerance of eager, not bit for bit: never one row
    assert any(note.startswith("compiled nafnet-nano for 2×3×128×128") for note in job.notes)
    rows = api.run(spec(compile=True, batch_size=2), job=job)
    assert rows[METRICS].equals(api.run(spec(batch_size=2))[METRICS])  # the stand-in compiler is the eager net
    assert set(rows["backend"]) == {"compiled"}


def test_compile_that_is_slower_runs_eager_with_one_warning(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: net)
    _timings(monkeypatch, 2.0)
    job = api.prepare(spec(compile=True))
    assert not isinstance(job.model.net, compiled.CompiledNet)
    assert job.labels["backend"] is None and job.run_hash == api.prepare(spec()).run_hash
    assert [w for w in job.warnings if "running eager" in w] == [
        w for w in job.warnings if w.startswith("nafnet-nano: compiled forward+backward is 2.0× slower")]


def test_a_suite_compiles_each_shape_once(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: calls.append(1) or net)
    _timings(monkeypatch, 0.5)
    cache = {}
    first = api.prepare(spec(compile=True), cache)
    second = api.prepare(spec(compile=True, attack=AttackSpec.of("pgd", eps="4/255", steps=2)), cache)
    assert len(calls) == 1 and first.model is second.model


def test_compile_refuses_bf16():
    with pytest.raises(SpecError, match="--compile .* fp32 only"):
        api.prepare(spec(compile=True, precision="bf16"))
