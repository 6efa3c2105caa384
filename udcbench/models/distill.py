"""Query distillation: a white-box surrogate of a black-box restoration model, learned from its outputs alone
(DUCD, Li et al., "Privacy-preserving Universal Adversarial Defense for Black-box Models", arXiv 2408.10647).

The target is only ever *evaluated*: every forward pass of one image or crop is one query, made under
`torch.no_grad()` with the target's parameters frozen, so no gradient of the target is used or even formed.
The recipe, all of it driven by one seed (same seed, same thread count, same platform -> a byte-identical file):

1. Query, round 1: (1 − probe)·queries crops of `crop` px from the dataset's train split (seeded sample,
   position and horizontal/vertical flips). With `noise` > 0 they come in pairs: a clean crop, then the same
   crop plus Gaussian noise of a σ drawn uniformly from [0, noise] (clamped to [0, 1]). The noisy twins show
   the surrogate how the target answers small input changes around real captures: the local behaviour that a
   transfer attack's gradient and DUCD's randomised smoothing (`smooth:surrogate=FILE`) rely on.
2. Fit: a network of architecture `arch` from a seeded random init, L1 between its [0,1] output and the stored
   target outputs (on random `patch`-px windows of the stored crops, when set), Adam with a cosine schedule,
   gradient clipping and an EMA of the weights (the recipe of `udcbench train`), for (1 − probe)·steps steps.
3. Round 2 (probe > 0): the rest of the queries, on fresh crops each followed by its *adversarial* twin: one
   FGSM step (random start, L∞ 8/255, mse-clean objective) against the half-trained surrogate, i.e. where
   the surrogate expects its output to move most (Jacobian-style augmentation, Papernot et al. 2017). The
   target's answers there correct the surrogate exactly where a transfer attack will lean on it. Training
   then continues on all pairs for the remaining steps; the EMA weights are saved. The pairs are kept in
   memory (2·queries·3·crop² floats).
4. Fidelity: mean PSNR(surrogate(y), target(y)) over the dataset's test split, one *evaluation query* per
   image, counted and recorded apart from the `queries` budget.

The header (`surrogate_info`) records kind="udcbench-surrogate", the architecture, the target and its weights
digest, the data, the queries used, the evaluation queries, the fidelity, the seed, the udcbench version and
the settings. It holds no wall time and no output path, so that reruns give the same bytes. Reading surrogate
files back (`load_surrogate`, `surrogate_info`) lives in udcbench.models.surrogates and is re-exported here.

The bundled `surrogate-uformer-nano.safetensors` (a nafnet-nano distilled from the bundled uformer-nano on
udc-mini with 2048 queries; fidelity 33.53 dB; 7.5 minutes on one CPU thread) was made with

    udcbench distill --target uformer-nano --data udc-mini --queries 2048 --arch nafnet-nano --crop 128 \
        --patch 64 --steps 800 --probe 0.5 --threads 1 --seed 0 \
        --out udcbench/models/weights/surrogate-uformer-nano.safetensors
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from udcbench.data import load_dataset
from udcbench.errors import SpecError, UnknownNameError
from udcbench.metrics import psnr
from udcbench.models.surrogates import (KIND, SURROGATE_FILE, bundled_surrogate, is_surrogate_path, load_surrogate,
                                        save_canonical, surrogate_info)
from udcbench.models.train import optimise, set_cosine_lr
from udcbench.outputs import check_file
from udcbench.version import __version__

__all__ = ["KIND", "SURROGATE_FILE", "DistillConfig", "bundled_surrogate", "distill", "is_surrogate_path",
           "load_surrogate", "save_canonical", "surrogate_info"]
PROBE_EPS = 8 / 255  # L∞ radius of the adversarial twins of round 2 (the benchmark's default budget)
Progress = Callable[[str, int, int, "float | None"], None]  # (stage, done, total, loss or None)


@dataclass(frozen=True)
class DistillConfig:
    """What `udcbench distill` takes (its flags); every field is recorded in the surrogate's header."""

    target: str = "uformer"
    weights: str | None = None  # the target's: None -> bundled, "random", or a checkpoint path
    data: str = "udc-mini"
    queries: int = 2048
    arch: str = "nafnet-nano"
    crop: int = 64
    patch: int | None = None  # side of the training patches cut from the stored crops (None: the whole crop)
    steps: int = 800
    batch_size: int = 16
    lr: float = 1e-3
    noise: float = 0.05
    probe: float = 0.5  # share of the queries (and steps) spent in round 2, on adversarial twins (run_rounds)
    ema: float = 0.995
    clip: float = 0.5
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # CPU threads while distilling (None: torch's setting); part of what reproduces
    eval_limit: int | None = None  # score fidelity on the first N test images only (None: all of them)


# --- checks -------------------------------------------------------------------------------------------------

def check_out(out: Path) -> None:
    """The output can be written: a .safetensors name, not a folder, below a folder that exists or can be made."""
    check_file(out, "--out", (".safetensors",))


def check_config(config: DistillConfig, out: Path) -> None:
    """The settings' own values, before any model or data is loaded."""
    if not isinstance(config.queries, int) or config.queries < 1:
        raise SpecError(f"--queries must be a positive number of target evaluations, got {config.queries}; "
                        "e.g. --queries 2048")
    for flag, value in (("--crop", config.crop), ("--steps", config.steps), ("--batch-size", config.batch_size)):
        if not isinstance(value, int) or value < 1:
            raise SpecError(f"{flag} must be a positive integer, got {value}")
    if config.patch is not None and (not isinstance(config.patch, int) or not 1 <= config.patch <= config.crop):
        raise SpecError(f"--patch {config.patch} must be a side from 1 to --crop {config.crop}; or leave it out")
    if config.threads is not None and (not isinstance(config.threads, int) or config.threads < 1):
        raise SpecError(f"--threads must be a positive integer, got {config.threads}")
    if config.eval_limit is not None and (not isinstance(config.eval_limit, int) or config.eval_limit < 1):
        raise SpecError(f"--eval-limit must be a positive number of test images, got {config.eval_limit}")
    if not 0 <= config.probe < 1 or config.queries - round(config.queries * config.probe) < 1:
        raise SpecError(f"--probe {config.probe:g} must lie in [0, 1) and leave round 1 at least one query")
    if not config.lr > 0:
        raise SpecError(f"--lr must be positive, got {config.lr:g}; e.g. --lr 1e-3")
    if not 0 <= config.noise <= 1:
        raise SpecError(f"--noise {config.noise:g} must lie in [0, 1] (the largest σ of the noisy twin queries; "
                        "0 queries clean crops only)")
    if config.device != "cpu" and not (config.device.startswith("cuda") and torch.cuda.is_available()):
        raise SpecError(f"--device {config.device} is not available here; use --device cpu (or cuda with a GPU)")
    check_out(out)


def _build(config: DistillConfig, target):
    """(target, untrained surrogate, train samples, test split, extra input names), all checked."""
    from udcbench.models import load_model

    if target is None:
        try:
            target = load_model(config.target, weights=config.weights, device=config.device, seed=config.seed)
        except UnknownNameError as error:
            raise UnknownNameError(f"--target: {error}") from None
    try:
        surrogate = load_model(config.arch, weights="random", seed=config.seed, device=config.device)
    except UnknownNameError as error:
        raise UnknownNameError(f"--arch: {error}") from None
    if surrogate.info.parameters == 0:
        raise SpecError(f"--arch {config.arch} has no trainable weights; pick a network, e.g. --arch nafnet-nano")
    samples = list(load_dataset(config.data, split="train"))
    test = load_dataset(config.data, split="test", limit=config.eval_limit)
    smallest = min(min(s.degraded.shape[-2:]) for s in samples)
    if smallest < config.crop:
        raise SpecError(f"--crop {config.crop} exceeds the smallest train image of {config.data} ({smallest} px); "
                        "lower it")
    names = tuple(dict.fromkeys(tuple(target.contract.extra_inputs) + tuple(surrogate.contract.extra_inputs)))
    missing = [name for name in names if name not in samples[0].extras]
    if missing:
        raise SpecError(f"the target or --arch needs {', '.join(missing)} for every image, and {config.data} "
                        "supplies none; use a dataset that provides it or another --arch")
    return target, surrogate, samples, test, names


# --- querying and fitting -------------------------------------------------------------------------------------

def _random_crop(samples, crop: int, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """(sample index, a crop of its degraded image with random horizontal/vertical flips)."""
    index = int(torch.randint(len(samples), (1,), generator=generator))
    image = samples[index].degraded
    top = int(torch.randint(image.shape[-2] - crop + 1, (1,), generator=generator))
    left = int(torch.randint(image.shape[-1] - crop + 1, (1,), generator=generator))
    patch = image[:, top:top + crop, left:left + crop]
    flips = torch.randint(2, (2,), generator=generator)
    if flips[0]:
        patch = patch.flip(-1)
    if flips[1]:
        patch = patch.flip(-2)
    return index, patch


def _extras(samples, owners: torch.Tensor, names, device) -> dict[str, torch.Tensor]:
    return {name: torch.stack([samples[int(i)].extras[name] for i in owners]).to(device) for name in names}


def query_inputs(samples, config: DistillConfig, generator: torch.Generator, count: int,
                 adversary: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, the train sample of each) for `count` queries: random crops, each followed by its twin when
    config.noise > 0 (Gaussian) or an `adversary` is given (adversary(clean crops, their samples) -> twins)."""
    crop, paired = config.crop, adversary is not None or config.noise > 0
    inputs, owners = torch.empty(count, 3, crop, crop), torch.empty(count, dtype=torch.int64)
    for number in range(count):
        if paired and number % 2 == 1:
            owners[number], inputs[number] = owners[number - 1], inputs[number - 1]
            if adversary is None:
                sigma = config.noise * float(torch.rand((), generator=generator))
                noise = torch.randn(inputs[number].shape, generator=generator)
                inputs[number] = (inputs[number] + sigma * noise).clamp(0, 1)
        else:
            owners[number], inputs[number] = _random_crop(samples, crop, generator)
    if adversary is not None and count > 1:
        inputs[1::2] = adversary(inputs[0::2][:count // 2], owners[1::2])
    return inputs, owners


def query_target(target, inputs: torch.Tensor, owners: torch.Tensor, samples, config: DistillConfig, names,
                 progress: Progress | None = None, done: int = 0) -> torch.Tensor:
    """The target's outputs for `inputs`: exactly one query each, in batches of `config.batch_size`, under
    no_grad. progress("query", done + answered so far, config.queries, None) after each batch."""
    outputs = torch.empty_like(inputs)
    for start in range(0, len(inputs), config.batch_size):
        stop = min(len(inputs), start + config.batch_size)
        extras = _extras(samples, owners[start:stop], names, config.device)
        with torch.no_grad():
            answer = target(inputs[start:stop].to(config.device), **extras)
        outputs[start:stop] = answer.detach().to("cpu", torch.float32)
        if progress is not None:
            progress("query", done + stop, config.queries, None)
    return outputs


def adversarial_twins(surrogate, samples, config: DistillConfig, generator: torch.Generator, names) -> Callable:
    """adversary(clean, owners) for query_inputs: each crop moved to where the current surrogate's output
    changes most — one signed-gradient step of the mse-clean objective from a random start in the L∞ ball of
    PROBE_EPS (FGSM with a random start). Only the surrogate's gradient is used; the target is not involved."""
    def adversary(clean: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        twins = []
        for start in range(0, len(clean), config.batch_size):
            x = clean[start:start + config.batch_size].to(config.device)
            extras = _extras(samples, owners[start:start + config.batch_size], names, config.device)
            delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(config.device) * PROBE_EPS
            with torch.no_grad():
                reference = surrogate(x, **extras)
            probe = (x + delta).clamp(0, 1).requires_grad_(True)
            (grad,) = torch.autograd.grad(F.mse_loss(surrogate(probe, **extras), reference), probe)
            delta = (delta + PROBE_EPS * grad.sign()).clamp(-PROBE_EPS, PROBE_EPS)
            twins.append((x + delta).clamp(0, 1).detach().cpu())
        return torch.cat(twins)

    return adversary


def _patches(inputs: torch.Tensor, outputs: torch.Tensor, side: int | None, generator: torch.Generator):
    """The same random `side`-px window of each (input, target output) pair; the pairs as they are for None.
    The target answered the whole crop, so a window's output holds the target's context beyond the window —
    the surrogate learns to restore it from less, as any patch-trained restorer does."""
    if side is None or side == inputs.shape[-1] and side == inputs.shape[-2]:
        return inputs, outputs
    cut_x, cut_y = [], []
    for x, y in zip(inputs, outputs):
        top = int(torch.randint(x.shape[-2] - side + 1, (1,), generator=generator))
        left = int(torch.randint(x.shape[-1] - side + 1, (1,), generator=generator))
        cut_x.append(x[:, top:top + side, left:left + side])
        cut_y.append(y[:, top:top + side, left:left + side])
    return torch.stack(cut_x), torch.stack(cut_y)


class Fit:
    """The surrogate's training, resumable across query rounds: one optimiser, one EMA and one cosine schedule
    over config.steps. Between rounds (and at the end) the wrapped model holds the EMA network."""

    def __init__(self, surrogate, config: DistillConfig, samples, names, progress: Progress | None = None):
        self.surrogate, self.config, self.samples, self.names = surrogate, config, samples, names
        self.net = surrogate.net
        for parameter in self.net.parameters():
            parameter.requires_grad_(True)
        self.ema = copy.deepcopy(self.net).eval()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.log = None if progress is None else (lambda step, loss: progress("train", step, config.steps, loss))

    def run(self, pairs, first: int, last: int, generator: torch.Generator) -> None:
        """Steps first..last-1 on the stored (inputs, outputs, owners), L1 to the target's outputs."""
        config, (inputs, outputs, owners) = self.config, pairs
        self.surrogate.net = self.net.train()
        for step in range(first, last):
            set_cosine_lr(self.optimizer, config.lr, step, config.steps)
            pick = torch.randint(len(inputs), (config.batch_size,), generator=generator)
            x, y = _patches(inputs[pick], outputs[pick], config.patch, generator)
            extras = _extras(self.samples, owners[pick], self.names, config.device)
            loss = F.l1_loss(self.surrogate(x.to(config.device), clamp=False, **extras), y.to(config.device))
            optimise(self.optimizer, self.net, self.ema, loss, config, step, self.log)
        self.surrogate.net = self.ema

    def finish(self):
        """The surrogate with its EMA network, frozen, in eval mode."""
        for parameter in self.surrogate.parameters():
            parameter.requires_grad_(False)
        return self.surrogate.eval()


def run_rounds(target, surrogate, samples, names, config: DistillConfig, progress: Progress | None = None):
    """(the trained surrogate, the queries made). Round 1: the first (1 − probe)·queries queries (crops and
    Gaussian twins), then as large a share of the steps. Round 2 (probe > 0): the rest of the queries on crops
    and their adversarial twins against the half-trained surrogate, then the rest of the steps on all pairs.
    One generator drives every draw."""
    generator = torch.Generator().manual_seed(config.seed)
    second = round(config.queries * config.probe)
    first_steps = round(config.steps * (1 - config.probe)) if second else config.steps
    fit = Fit(surrogate, config, samples, names, progress)
    inputs, owners = query_inputs(samples, config, generator, config.queries - second)
    pairs = (inputs, query_target(target, inputs, owners, samples, config, names, progress), owners)
    fit.run(pairs, 0, first_steps, generator)
    if second:
        adversary = adversarial_twins(surrogate, samples, config, generator, names)
        more, more_owners = query_inputs(samples, config, generator, second, adversary)
        answers = query_target(target, more, more_owners, samples, config, names, progress, done=len(inputs))
        pairs = tuple(torch.cat(both) for both in zip(pairs, (more, answers, more_owners)))
        fit.run(pairs, first_steps, config.steps, generator)
    return fit.finish(), len(pairs[0])


def measure_fidelity(surrogate, target, dataset, names, device) -> dict[str, float]:
    """Mean PSNR of surrogate vs target outputs over `dataset` (one evaluation query per image), with both
    models' PSNR against the ground truth for context."""
    fidelity, target_gt, surrogate_gt = [], [], []
    with torch.no_grad():
        for sample in dataset:
            image, gt = sample.degraded[None].to(device), sample.gt[None].to(device)
            extras = {name: sample.extras[name][None].to(device) for name in names}
            answer, output = target(image, **extras).detach(), surrogate(image, **extras)
            fidelity.append(psnr(output, answer).item())
            target_gt.append(psnr(answer, gt).item())
            surrogate_gt.append(psnr(output, gt).item())

    def mean(values):
        return sum(values) / len(values)

    return {"fidelity": mean(fidelity), "evaluations": len(fidelity), "target_gt": mean(target_gt),
            "surrogate_gt": mean(surrogate_gt)}


# --- the whole -------------------------------------------------------------------------------------------------

def canonical_command(config: DistillConfig) -> str:
    """The command that remakes the file, every setting spelled out, less --out: where a file is written does
    not change its bytes."""
    weights = f" --weights {config.weights}" if config.weights is not None else ""
    patch = f"--patch {config.patch} " if config.patch is not None else ""
    tail = f" --eval-limit {config.eval_limit}" if config.eval_limit is not None else ""
    tail += f" --threads {config.threads}" if config.threads is not None else ""
    tail += f" --probe {config.probe:g}" if config.probe else ""
    return (f"udcbench distill --target {config.target}{weights} --data {config.data} --queries {config.queries} "
            f"--arch {config.arch} --crop {config.crop} {patch}--steps {config.steps} "
            f"--batch-size {config.batch_size} --lr {config.lr:g} --noise {config.noise:g} --seed {config.seed} "
            f"--device {config.device}{tail}")


def distill(config: DistillConfig, out: str | Path, target=None, progress: Progress | None = None) -> dict:
    """Distil `config.target` into a new `config.arch` network from `config.queries` target outputs; write it
    with its header to `out` (.safetensors) and return the header. Everything is validated before the first
    query, and nothing is written before the end.

    target: a ready model to query instead of loading `config.target` (e.g. a wrapper that counts calls); it is
    called as target(x, **extras) and needs `.info` and `.contract` like a RestorationModel.
    progress(stage, done, total, loss): stage "query" (loss None) or "train", round 1's then round 2's."""
    from udcbench.models import format_model_spec, weights_id

    out = Path(out)
    check_config(config, out)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(config.threads or threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            target, surrogate, samples, test, names = _build(config, target)
            for parameter in getattr(target, "parameters", lambda: [])():
                parameter.requires_grad_(False)  # never a gradient through the black box
            surrogate, used = run_rounds(target, surrogate, samples, names, config, progress)
            scores = measure_fidelity(surrogate, target, test, names, config.device)
    finally:
        torch.set_num_threads(threads)
    info = surrogate.info
    metadata = {
        "kind": KIND, "arch": format_model_spec(info.name, info.extra.get("options")),
        "parameters": str(info.parameters), "target": target.info.name,
        "target_weights": weights_id(target.info, config.seed), "data": test.info.identity or config.data,
        "query_split": "train", "queries": str(used), "query_budget": str(config.queries),
        "eval_split": "test", "eval_queries": str(scores["evaluations"]),
        "fidelity_psnr": f"{scores['fidelity']:.4f}", "test_psnr_target": f"{scores['target_gt']:.4f}",
        "test_psnr_surrogate": f"{scores['surrogate_gt']:.4f}", "seed": str(config.seed), "udcbench": __version__,
        "torch": torch.__version__, "threads": str(config.threads or threads),
        "settings": json.dumps(asdict(config), sort_keys=True), "command": canonical_command(config)}
    save_canonical(surrogate.net.state_dict(), out, metadata)
    return metadata
