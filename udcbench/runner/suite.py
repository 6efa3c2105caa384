"""Benchmark suites: a YAML file (or several values on one command line) expanded to the cross product of runs.

    suite: paper                      # a name, printed and recorded
    data: udc-mini                    # or {name: synth:ROOT, split: test, limit: 8}
    seeds: [0]                        # (or seed: 0)
    models: [uformer, {name: nafnet, weights: ckpt.pth}]
    attacks:                          # a list value of any parameter expands too
      - {name: pgd, eps: [1/255, 2/255, 4/255, 8/255], steps: 20}
      - {name: cw}
    defenses: [none, purify, ft, purify+ft]
    threats: [gray-box, adaptive]     # adaptive × none is gray-box × none: planned once
    exclude:                          # combinations to leave out (every given key must match)
      - {threat: adaptive, attack: simba}
    device: auto                      # cpu | cuda | auto
    batch_size: 1
    precision: fp32                   # bf16: autocast on GPU
    scoring: float                    # 8bit: score outputs rounded to 8 bits (as saved PNGs)
    eps_batch: false                  # true: the ε values of one PGD setting run as one batch (gray-box)
    memory: auto                      # low: activation checkpointing; normal: never; auto: only if needed
    compile: false                    # true: torch.compile the networks (eager where slower or unequal)
    metrics: [lpips-alex]             # scored besides PSNR and SSIM (`udcbench list metrics`; pyiqa:NAME)
    lpips: null                       # alex | vgg: also score LPIPS (the same as metrics: [lpips-NET])
    eot: null
    radius: [0.1, 0.25]               # certified PSNR at these L2 radii, for the runs whose defense smooths

Every key is checked: an unknown key, or an attack parameter the attack does not have, is an error naming the
file and line. Expansion order — models, data, attacks (each parameter list in file order), defenses, threats,
seeds — is the order runs are listed in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from udcbench.errors import SpecError
from udcbench.spec import AttackSpec, DataSpec, DefenseSpec, ModelSpec, RunSpec

TOP_KEYS = ("suite", "description", "data", "split", "limit", "seed", "seeds", "models", "attacks", "defenses",
            "threats", "exclude", "device", "batch_size", "precision", "scoring", "lpips", "metrics", "eot",
            "eps_batch", "memory", "compile", "radius")
EXCLUDE_KEYS = ("model", "attack", "eps", "defense", "threat", "seed", "data")
ATTACK_KEYS = ("name", "objective", "mask")  # besides the attack's own parameters
DATA_KEYS = ("name", "split", "limit")
MODEL_KEYS = ("name", "weights")


@dataclass
class Suite:
    name: str = "command line"
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec()])
    data: list[DataSpec] = field(default_factory=lambda: [DataSpec()])
    attacks: list[AttackSpec] = field(default_factory=lambda: [AttackSpec()])
    defenses: list[str] = field(default_factory=lambda: ["none"])
    threats: list[str] = field(default_factory=lambda: ["gray-box"])
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    batch_size: int = 1
    precision: str = "fp32"
    scoring: str = "float"
    eps_batch: bool = False
    memory: str = "auto"
    compile: bool = False
    lpips: str | None = None
    metrics: list[str] = field(default_factory=list)
    eot: int | None = None
    radius: list[float] = field(default_factory=list)  # certified radii (runs with a smoothing defense)
    exclude: list[dict] = field(default_factory=list)
    skipped: int = 0  # adaptive × no-defense combinations folded into gray-box
    excluded: int = 0

    def specs(self) -> list[RunSpec]:
        specs, self.skipped, self.excluded = [], 0, 0
        radius = check_radius(self.radius, self.defenses)
        for model, data, attack, defense, threat, seed in itertools.product(
                self.models, self.data, self.attacks, self.defenses, self.threats, self.seeds):
            if threat == "adaptive" and defense.strip() == "none" and "gray-box" in self.threats:
                self.skipped += 1  # attacking "through" no defense is the gray-box run
                continue
            eps = dict(attack.params).get("eps")
            values = {"model": model.name, "attack": attack.name, "eps": None if eps is None else str(eps),
                      "defense": defense.strip(), "threat": threat, "seed": str(seed), "data": data.name}
            if any(all(values[k] == str(v) for k, v in rule.items()) for rule in self.exclude):
                self.excluded += 1
                continue
            specs.append(RunSpec(model=model, attack=attack, defense=DefenseSpec(defense), data=data, seed=seed,
                                 device=self.device, threat=threat, lpips=self.lpips, eot=self.eot,
                                 metrics=tuple(self.metrics),
                                 batch_size=self.batch_size, precision=self.precision, scoring=self.scoring,
                                 memory=self.memory, compile=bool(self.compile),
                                 radius=radius if smooths(defense) else ()))
        return stack_eps(specs) if self.eps_batch else specs

    def describe(self) -> str:
        counts = [(len(self.models), "model"), (len(self.data), "dataset"), (len(self.attacks), "attack setting"),
                  (len(self.defenses), "defense"), (len(self.threats), "threat model"), (len(self.seeds), "seed")]
        return " × ".join(f"{n} {label}{'s' if n != 1 else ''}" for n, label in counts)


def smooths(defense: str) -> bool:
    """Whether a defense spec has a smoothing component (`smooth`)."""
    return any(part.strip().partition(":")[0].strip() == "smooth" for part in defense.split("+"))


def check_radius(values, defenses) -> tuple[float, ...]:
    """The certified radii as numbers ≥ 0; SpecError for anything else, or when no defense smooths."""
    radii = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not 0 <= number < float("inf"):
            raise SpecError(f"radius takes L2 radii ≥ 0, got {value!r}; e.g. --radius 0.1,0.25,0.5")
        radii.append(number)
    if radii and not any(smooths(defense) for defense in defenses):
        raise SpecError("--radius certifies smoothed defenses, and no defense here smooths; add one, e.g. "
                        "--defense smooth:sigma=0.25, or drop --radius")
    return tuple(sorted(set(radii)))


def eps_stack_key(spec: RunSpec):
    """What the runs of one ε stack share: everything but eps (None: the run cannot be stacked)."""
    from udcbench.registry import ATTACKS

    crafted_bare = spec.threat == "gray-box" or spec.defense.spec.strip() == "none"
    if not crafted_bare or spec.attack.mask is not None or "eps" not in dict(spec.attack.params):
        return None
    if not getattr(ATTACKS.get(spec.attack.name).factory, "stacks_eps", False):
        return None
    params = tuple((k, v) for k, v in spec.attack.params if k != "eps")
    return (spec.model, spec.data, spec.seed, spec.device, spec.batch_size, spec.precision, spec.attack.name,
            params, spec.attack.objective)


def stack_eps(specs: list[RunSpec]) -> list[RunSpec]:
    """--eps-batch: every gray-box run of a stackable attack (pgd) records how many ε values its attack setting
    has in the plan (eps_batch = K); the planner then crafts them as one K·B batch."""
    import dataclasses

    values: dict = {}
    for spec in specs:
        key = eps_stack_key(spec)
        if key is not None:
            values.setdefault(key, set()).add(str(dict(spec.attack.params)["eps"]))
    stacked = []
    for spec in specs:
        key = eps_stack_key(spec)
        count = len(values[key]) if key is not None else 1
        stacked.append(dataclasses.replace(spec, eps_batch=count) if count > 1 else spec)
    return stacked


def attack_settings(name: str, params: dict, objective="mse-clean", mask=None, where: str = "") -> list[AttackSpec]:
    """One AttackSpec per combination of list-valued parameters (and objectives)."""
    from udcbench.attacks.params import check_names
    from udcbench.registry import ATTACKS

    defaults = ATTACKS.get(name).info.get("defaults", {})
    check_names(name, defaults, params, where)
    keys = list(params)
    values = [v if isinstance(v, list) else [v] for v in params.values()]
    objectives = objective if isinstance(objective, list) else [objective]
    return [AttackSpec.of(name, objective=obj, mask=mask, **dict(zip(keys, combo)))
            for combo in itertools.product(*values) for obj in objectives]


def _where(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}: "


def _check_keys(path: Path, node, allowed: tuple[str, ...], what: str, extra: tuple[str, ...] = ()) -> None:
    """Unknown keys of a YAML mapping node are errors naming the line."""
    if not isinstance(node, yaml.MappingNode):
        raise SpecError(f"{_where(path, node)}{what} must be a mapping (key: value lines)")
    for key, _ in node.value:
        if key.value not in allowed + extra:
            valid = ", ".join(allowed + extra)
            raise SpecError(f"{_where(path, key)}unknown key {key.value!r} in {what}; valid keys: {valid}")


# the type each scalar key of a suite file must have, and an example of it
SCALARS = {"seed": (int, "0"), "seeds": (int, "[0, 1]"), "limit": (int, "8"), "batch_size": (int, "4"),
           "eot": (int, "2"), "eps_batch": ((bool, int), "true"), "compile": (bool, "true"), "device": (str, "cuda"),
           "precision": (str, "bf16"), "scoring": (str, "8bit"), "lpips": (str, "alex"), "memory": (str, "auto"),
           "split": (str, "test")}
KIND_NAMES = {int: "a whole number", bool: "true or false", str: "text"}


def _typed(path: Path, node, key: str, value):
    """`value` of suite key `key` if it has the key's type (SCALARS; null where the key allows it), else a
    SpecError naming the file and line: `seed: abc` or `limit: many` is refused, never converted."""
    kind, example = SCALARS[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    fits = isinstance(value, kinds) and not (bool not in kinds and isinstance(value, bool))
    if value is None and key in ("limit", "lpips", "device"):
        fits = True
    if not fits:
        name = " or ".join(KIND_NAMES[k] for k in kinds)
        raise SpecError(f"{_where(path, node) if node is not None else f'{path}: '}{key} must be {name}, got "
                        f"{value!r}; e.g. {key}: {example}")
    if key in ("seed", "seeds") and not 0 <= value < 2 ** 63:
        raise SpecError(f"{_where(path, node)}{key} must lie in [0, 2^63), got {value}; e.g. {key}: {example}")
    if key in ("limit", "batch_size", "eot") and value is not None and value < 1:
        raise SpecError(f"{_where(path, node)}{key} must be at least 1, got {value}; e.g. {key}: {example}")
    return value


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; errors name the file and the line."""
    from udcbench.registry import ATTACKS

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"suite file {path} does not exist; pass a YAML file such as benchmarks/ci.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); save the suite "
                        "file as UTF-8") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        problem = str(getattr(error, "problem", "") or "")
        if "tag:yaml.org,2002:python/" in problem:
            tag = problem.split("tag:yaml.org,2002:")[-1].rstrip("'")
            raise SpecError(f"{path}:{line}: refusing the tag !!{tag}: suite files are plain YAML and udcbench "
                            "never builds Python objects from files; remove the tag") from None
        raise SpecError(f"{path}:{line}: not valid YAML ({getattr(error, 'problem', error)}); fix the syntax") from None
    if root is None:
        raise SpecError(f"{path} is empty; a suite needs at least models and attacks (see benchmarks/ci.yaml)")
    _check_keys(path, root, TOP_KEYS, "the suite")
    nodes = {key.value: value for key, value in root.value}
    suite = Suite(name=str(data.get("suite", path.stem)))
    if "models" in data:
        suite.models = []
        for item, node in zip(_as_list(data["models"]), _items(nodes["models"])):
            if isinstance(item, dict):
                _check_keys(path, node, MODEL_KEYS, "a model")
                suite.models.append(ModelSpec(str(item["name"]), item.get("weights")))
            else:
                suite.models.append(ModelSpec(str(item)))
    data_value = data.get("data", "udc-mini")
    split = _typed(path, nodes.get("split"), "split", data.get("split", "test"))
    limit = _typed(path, nodes.get("limit"), "limit", data.get("limit"))
    suite.data = []
    for item, node in zip(_as_list(data_value), _items(nodes.get("data"))):
        if isinstance(item, dict):
            _check_keys(path, node, DATA_KEYS, "data")
            suite.data.append(DataSpec(str(item["name"]), _typed(path, node, "split", item.get("split", split)),
                                       _typed(path, node, "limit", item.get("limit", limit))))
        else:
            suite.data.append(DataSpec(str(item), split, limit))
    if "attacks" in data:
        suite.attacks = []
        for item, node in zip(_as_list(data["attacks"]), _items(nodes["attacks"])):
            if isinstance(item, str):
                item, node = {"name": item}, None
            if node is not None:
                name = item.get("name")
                if name is None:
                    raise SpecError(f"{_where(path, node)}an attack needs a name (e.g. name: pgd)")
                try:
                    params = ATTACKS.get(str(name)).info.get("defaults", {})
                except SpecError as error:
                    raise SpecError(f"{_where(path, node)}{error}") from None
                _check_keys(path, node, ATTACK_KEYS, f"attack {name}", tuple(params))
            params = {k: v for k, v in item.items() if k not in ATTACK_KEYS}
            suite.attacks.extend(attack_settings(str(item["name"]), params, item.get("objective", "mse-clean"),
                                                 item.get("mask")))
    for rule, node in zip(_as_list(data.get("exclude", [])), _items(nodes.get("exclude"))):
        _check_keys(path, node, EXCLUDE_KEYS, "an exclude rule")
        suite.exclude.append(rule)
    for key in ("defenses", "threats"):
        if key in data:
            setattr(suite, key, [str(v) for v in _as_list(data[key])])
    if "seed" in data and "seeds" in data:
        raise SpecError(f"{_where(path, nodes['seeds'])}give either seed or seeds, not both")
    if "seed" in data or "seeds" in data:
        key = "seeds" if "seeds" in data else "seed"
        suite.seeds = [_typed(path, node, key, v) for v, node in zip(_as_list(data[key]), _items(nodes[key]))]
    for key in ("device", "batch_size", "precision", "scoring", "lpips", "eot", "eps_batch", "memory", "compile"):
        if key in data:
            setattr(suite, key, _typed(path, nodes[key], key, data[key]))
    if "metrics" in data:
        suite.metrics = [str(v) for v in _as_list(data["metrics"])]
    if "radius" in data:
        suite.radius = _as_list(data["radius"])
    empty = [key for key in ("models", "attacks", "defenses", "threats", "seeds") if not getattr(suite, key)]
    if empty:
        raise SpecError(f"{path}: {', '.join(empty)} is empty; list at least one value")
    return suite


def _items(node) -> list:
    """The item nodes of a YAML sequence (a scalar stands for a one-item list)."""
    if node is None:
        return [None]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else [node]
