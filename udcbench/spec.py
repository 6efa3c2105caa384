"""Frozen run specifications and their stable hash.

The hash covers everything that decides a result row's numbers: the resolved model configuration and a digest
of its weights, the attack with all parameters filled in, the objective, the defense, the dataset identity and
split, the seed, the threat model and the device type. It leaves out `limit` and the output folder, so a run
with --limit 4 followed by a full run resumes instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

THREATS = ("gray-box", "adaptive")
PRECISIONS = ("fp32", "bf16")
SCORINGS = ("float", "8bit")
MEMORY_MODES = ("normal", "low", "auto")


@dataclass(frozen=True)
class ModelSpec:
    name: str = "uformer"
    weights: str | None = None  # None: bundled; "random"; or a checkpoint path


@dataclass(frozen=True)
class AttackSpec:
    name: str = "pgd"
    params: tuple[tuple[str, Any], ...] = ()
    objective: str = "mse-clean"
    mask: str | None = None  # None, "box:TOP,LEFT,HEIGHT,WIDTH" (fractions) or a PNG file

    @staticmethod
    def of(name: str, objective: str = "mse-clean", mask: str | None = None, **params) -> "AttackSpec":
        return AttackSpec(name, tuple(sorted((k, v) for k, v in params.items() if v is not None)), objective,
                          mask)


@dataclass(frozen=True)
class DefenseSpec:
    spec: str = "none"


@dataclass(frozen=True)
class DataSpec:
    name: str = "udc-mini"
    split: str = "test"
    limit: int | None = None


@dataclass(frozen=True)
class RunSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    defense: DefenseSpec = field(default_factory=DefenseSpec)
    data: DataSpec = field(default_factory=DataSpec)
    seed: int = 0
    device: str = "cpu"
    threat: str = "gray-box"
    lpips: str | None = None  # "alex" or "vgg": also score LPIPS (needs local weights); = metrics lpips-NET
    metrics: tuple[str, ...] = ()  # metrics scored besides the default PSNR and SSIM (lpips-alex, pyiqa:NAME, ...)
    eot: int | None = None  # adaptive threat: draws of a randomised defense per objective evaluation (None: 1,
    # or 2 for a randomised defense)
    batch_size: int = 1  # images per attack batch (>1: one seeded draw per batch, so it enters the run hash)
    precision: str = "fp32"  # or "bf16": autocast of the model passes
    scoring: str = "float"  # or "8bit": score the outputs rounded to 8 bits, as papers that save PNGs do
    eps_batch: int = 1  # > 1: this run's gray-box attack is computed in one pass with the other eps_batch − 1
    # eps values of its attack setting (a K·B batch; see runner/plan.py), so it enters the run hash
    memory: str = "auto"  # "low": activation checkpointing; "auto": only if a plain white-box step would not fit,
    # decided before the run; "normal": never (memory never changes a number, so it is not hashed)
    compile: bool = False  # torch.compile the network (falls back to eager where slower or unequal)
    radius: tuple[float, ...] = ()  # L2 radii at which a smoothed defense's certified PSNR is scored (--radius)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "RunSpec":
        """Inverse of to_dict (the `runs` table of results.db stores specs this way)."""
        attack = dict(data.get("attack", {}))
        attack["params"] = tuple(tuple(pair) for pair in attack.get("params", ()))
        top = {k: v for k, v in data.items() if k not in ("model", "attack", "defense", "data")}
        for key in ("metrics", "radius"):
            if key in top:
                top[key] = tuple(top[key])
        return RunSpec(model=ModelSpec(**data.get("model", {})), attack=AttackSpec(**attack),
                       defense=DefenseSpec(**data.get("defense", {})), data=DataSpec(**data.get("data", {})),
                       **top)


def _setting_text(key: str, value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        steps = value * 255
        if key == "alpha" and abs(steps - round(steps)) < 1e-6 and round(steps) > 0:
            return f"{round(steps)}/255"
        return f"{value:.6g}"
    return str(value)


def describe_settings(params: dict) -> str | None:
    """The attack parameters a user set, besides eps and steps (which have leaderboard columns of their own),
    as one label: {'alpha': 1/255, 'restarts': 3} -> 'alpha=1/255, restarts=3'; None when there are none."""
    parts = [f"{key}={_setting_text(key, params[key])}" for key in sorted(params)
             if key not in ("eps", "steps") and params[key] is not None]
    return ", ".join(parts) or None


def stable_hash(resolved: dict) -> str:
    """16 hex digits of SHA-256 over canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def image_seed(seed: int, image: str, stage: str) -> int:
    """A per-image, per-stage seed, independent of image order and of --limit."""
    return int(hashlib.sha256(f"{seed}:{image}:{stage}".encode()).hexdigest()[:15], 16)
