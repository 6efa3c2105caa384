"""How a prepared run executes its network: `--memory` (activation checkpointing, chosen up front) and `--compile`
(torch.compile per image size, kept only where proven equal and faster). Neither changes what a run measures:
checkpointing is bit-identical; a compiled network equals eager within 1e-4 relative (udcbench.models.compiled),
and a run that uses one is labelled `backend compiled` so its rows never merge with eager ones.

Both act before anything is written: `choose_memory` probes the model at a small size and refuses a run whose
white-box step would not fit (naming the largest size that would); `compile_for_data` compiles and checks the
network on a probe batch of every image size of the dataset (minutes per size on a CPU; reported apart).
"""
from __future__ import annotations

import torch

from udcbench.errors import SpecError

LARGE = 0.25  # a step estimated above this share of the available memory gets glibc's fixed mmap threshold


def _first_extras(model, dataset) -> dict:
    """The first sample's extra inputs the model needs, with a batch dimension."""
    needs = model.contract.extra_inputs
    return {k: v[None] for k, v in dataset[0].extras.items() if k in needs} if needs else {}


def _shapes(dataset) -> list[tuple[int, int, int]]:
    channels = int(dataset[0].degraded.shape[0])
    return [(channels, h, w) for h, w in sorted(dataset.image_sizes())]


def choose_memory(model, dataset, device: torch.device, mode: str, batch: int) -> str | None:
    """Apply --memory to `model` (in place) for white-box steps on `batch` images of the dataset's sizes.

    "normal" never checkpoints; "low" checkpoints the declared blocks; "auto" only if a plain step would not
    fit. Raises SpecError, before anything is written, if the mode would not fit (the message names the estimate
    and the largest square image that fits). Returns a line saying what was chosen and why when blocks are
    checkpointed, else None."""
    from udcbench.models import memory

    bound = model.bind(**extras) if (extras := _first_extras(model, dataset)) else model
    shapes = _shapes(dataset)
    chosen = memory.choose(bound, shapes, device, mode, batch=batch)
    memory.set_checkpointing(model, chosen == "low")
    largest = max(shapes, key=lambda s: s[1] * s[2])
    est = memory.probe(bound, device).estimate(largest, batch, modes=("normal", "low") if chosen == "low"
                                               else ("normal",))
    if device.type == "cpu" and (chosen == "low" or est.need(chosen) > LARGE * memory.available_bytes(device)):
        memory.return_freed_memory()  # checkpointed or memory-bound: keep the peak RSS near the estimate
    if chosen == "normal":
        return None
    size = f"{largest[1]}×{largest[2]}" + (f" × {batch}" if batch > 1 else "")
    return (f"memory ({mode}): {model.info.name} blocks checkpointed — one white-box step on {size} needs "
            f"≈ {est.need('normal') / 1e9:.2f} GB plain, {est.need('low') / 1e9:.2f} GB checkpointed, "
            f"{memory.available_bytes(device) / 1e9:.1f} GB available")


def compile_for_data(model, dataset, device: torch.device, batches: list[int], compiler, precision: str):
    """--compile: the model with its network compiled for batches of `batches` images of every size in the
    dataset (the Compiler caches per model, shape and device, so a suite compiles each once).

    Returns (model to run, notes, warnings, compiled?): one note per shape compiled now (compile seconds and
    the speed ratio), one warning per shape that runs eager (why). A batch smaller than these (the last one of
    a dataset whose size is not a multiple, or SimBA's second-sign queries for part of a batch) run eager."""
    if precision != "fp32":
        raise SpecError("--compile is checked against eager in fp32 only; drop --precision bf16 or --compile")
    extras = _first_extras(model, dataset)
    notes, warnings, chosen = [], [], model
    for batch in sorted({min(b, len(dataset)) for b in batches}):
        for channels, height, width in _shapes(dataset):
            outcome = compiler.prepare(model, (batch, channels, height, width), device, extras=extras)
            shape = "×".join(map(str, outcome.shape))
            if outcome.compiled:
                chosen = outcome.model
                if not outcome.cached:
                    notes.append(f"compiled {outcome.name} for {shape} in {outcome.compile_seconds:.0f} s "
                                 f"(forward+backward {outcome.ratio:.2f}× eager; output within "
                                 f"{max(outcome.output_error, outcome.gradient_error):.0e} relative)")
            elif outcome.warning:
                warnings.append(outcome.warning)
    return chosen, notes, warnings, chosen is not model
