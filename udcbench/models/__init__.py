"""Restoration models: `load_model(name, weights=None, device="cpu")`.

A model is named by a configuration or a family, one rule (`resolve_name`): a configuration name always means that
configuration (`discnet`, `uformer-t`); a family name that is no configuration's name picks the family's
configuration with bundled weights (`uformer` -> uformer-nano, `nafnet` -> nafnet-nano). `family_names()` says
where every family name leads; `udcbench list models` shows it. A name may be followed by
options that the model registers (`register_model(..., options={"key": Option(default, help, parse)})`):
`uformer-t:train_patch=256`, several joined by `&` (`NAME:a=1&b=2`; not `,`, which separates models on the
command line). A model without options refuses any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from udcbench.errors import CheckpointError, MissingWeightsError, SpecError, UnknownNameError
from udcbench.models.base import InputContract, ModelInfo, RestorationModel
from udcbench.models.checkpoints import load_into, read_state_dict
from udcbench.registry import MODELS, Option, did_you_mean

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_weights(name: str) -> Path | None:
    """The weights a configuration ships with: udcbench's own (models/weights/NAME.safetensors), or the file a
    plugin package declares with `register_model(NAME, ..., bundled_weights=PATH or a function returning one)`
    (its package data, found wherever the package is installed). None: it ships none."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if path.is_file():
        return path
    declared = MODELS.get(name).info.get("bundled_weights") if name in MODELS.names() else None
    if callable(declared):
        declared = declared()
    if declared is None:
        return None
    if not Path(declared).is_file():
        raise MissingWeightsError(f"model {name!r} declares bundled weights {declared}, which is not a file; "
                                  f"reinstall the package that provides {name!r}, or pass --weights FILE")
    return Path(declared)


def weights_id(info: ModelInfo, seed: int) -> str:
    """A model's weights as run hashes and surrogate headers record them: 'bundled:<digest>', 'file:<digest>',
    'none' (training-free) or 'random:<seed>'."""
    from udcbench.spec import file_digest

    if info.weights.startswith("bundled:"):
        return "bundled:" + file_digest(bundled_weights(info.name))
    if info.weights.startswith("none"):
        return "none"
    if info.weights == "random":
        return f"random:{seed}"
    return "file:" + file_digest(info.weights)


def split_options(name: str) -> tuple[str, str | None]:
    """'uformer-t:train_patch=256' -> ('uformer-t', 'train_patch=256'); 'uformer-t' -> ('uformer-t', None)."""
    base, colon, text = str(name).partition(":")
    return base.strip(), (text if colon else None)


def option_table(config: str) -> dict[str, Option]:
    """The options a registered configuration takes (empty for most models)."""
    return dict(MODELS.get(config).info.get("options", {}))


def format_model_spec(config: str, options: Mapping[str, Any] | None = None) -> str:
    """The name that rebuilds this configuration: 'uformer-t:train_patch=128' (every option), or 'nafnet-nano'."""
    if not options:
        return config
    return config + ":" + "&".join(f"{key}={options[key]}" for key in sorted(options))


def _example(config: str, table: Mapping[str, Option]) -> str:
    return format_model_spec(config, {key: option.default for key, option in table.items()})


def resolve_options(config: str, text: str | None = None, given: Mapping[str, Any] | None = None) -> dict:
    """Every option of `config` with its value: the defaults, overridden by `text` ('a=1&b=2') and `given`."""
    table = option_table(config)
    example = _example(config, table)
    if text is not None and not text.strip():
        hint = f"write e.g. --model {example} or drop the ':'" if table else "drop the ':'"
        raise SpecError(f"model {config}: nothing follows ':'; {hint}")
    if not table and (text is not None or given):
        shown = text if text is not None else "&".join(f"{k}={v}" for k, v in given.items())
        raise SpecError(f"model {config} takes no options (got {shown!r}); use --model {config}")
    pieces: list[tuple[str, Any]] = []
    for piece in (text.split("&") if text is not None else []):
        key, equals, value = piece.strip().partition("=")
        if not equals or not key.strip() or not value.strip():
            raise SpecError(f"model {config}: option {piece.strip()!r} is not key=value; write e.g. --model {example}")
        pieces.append((key.strip(), value.strip()))
    pieces += list((given or {}).items())
    resolved: dict[str, Any] = {key: option.default for key, option in table.items()}
    seen: dict[str, Any] = {}
    for key, value in pieces:
        if key not in table:
            listing = "; ".join(f"{k} ({o.help}; default {o.default})" for k, o in table.items())
            raise SpecError(f"model {config} has no option {key!r}{did_you_mean(key, table)}; its options: "
                            f"{listing}; e.g. --model {example}")
        try:
            parsed = table[key].parse(str(value))
        except ValueError as error:
            raise SpecError(f"model {config}: {key}={value} {error}; e.g. --model {example}") from None
        if key in seen and seen[key] != parsed:
            raise SpecError(f"model {config}: option {key} is given twice ({seen[key]} and {parsed}); give it once")
        seen[key] = resolved[key] = parsed
    return resolved


RULE = "a configuration name means that configuration; another family name picks its configuration with bundled weights"


def _families() -> dict[str, list[str]]:
    """family -> its configurations (sorted)."""
    families: dict[str, list[str]] = {}
    for entry in MODELS.entries():
        families.setdefault(entry.info.get("family", entry.name), []).append(entry.name)
    return families


def resolve_name(name: str) -> tuple[str, str | None]:
    """(configuration, the family name it was picked by, or None), by the one rule (RULE): a configuration name as
    is; a family name that is not also a configuration's -> the family's configuration with bundled weights.

    Options after ':' are ignored here (`load_model` applies them to the resolved configuration).
    """
    name, _ = split_options(name)
    names = MODELS.names()
    if name in names:
        return name, None
    families = _families()
    if name in families:
        with_weights = [n for n in families[name] if bundled_weights(n)]
        if with_weights:
            return with_weights[0], name
        raise SpecError(f"model family {name!r} has no configuration with bundled weights; pick one of "
                        f"{', '.join(families[name])} and pass --weights FILE or --weights random")
    known = sorted(set(families) - set(names)) + names
    raise UnknownNameError(f"unknown model {name!r}{did_you_mean(name, known)}; known models: {', '.join(known)} "
                           f"({RULE}; see `udcbench list models`)")


def family_names() -> dict[str, str]:
    """Every family name -> the configuration it resolves to (resolve_name; a family without a configuration of
    its name and without bundled weights -> '' as it resolves to none)."""
    resolved = {}
    for family in _families():
        try:
            resolved[family] = resolve_name(family)[0]
        except SpecError:
            resolved[family] = ""
    return resolved


def family_caption() -> str:
    """The line `udcbench list models` prints under its table: the rule, and where each family name leads."""
    resolved, families = family_names(), _families()
    picks = ", ".join(f"{family} → {config}" for family, config in resolved.items() if config and config != family)
    own = [family for family, config in resolved.items() if config == family]
    bundled = [n for family in own for n in families[family] if n != family and bundled_weights(n)]
    none = ", ".join(family for family, config in resolved.items() if not config)
    text = f"Names: {RULE}. Family names: {picks}"
    if own:
        text += f"; {', '.join(own)} are configuration names too and mean those configurations"
        text += f" (bundled weights: {', '.join(bundled)})" if bundled else ""
    return text + (f"; {none} name no configuration with bundled weights" if none else "")


def _load_checked(net, state: dict, source: str, entry, options: dict) -> None:
    """load_into, with the model's hint (e.g. which train_patch a Uformer checkpoint needs) on a mismatch."""
    try:
        load_into(net, state, source)
    except CheckpointError as error:
        hint = entry.info.get("checkpoint_hint")
        text = hint(state, options) if hint else None
        if not text:
            raise
        raise CheckpointError(f"{error}; {text}") from None


def load_model(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu",
               seed: int = 0, options: Mapping[str, Any] | None = None) -> RestorationModel:
    """Build a registered model and load its weights.

    name: a configuration or family name, optionally with options: 'uformer-t:train_patch=256' (see
    `udcbench list models`); `options` gives them as a dict instead (or as well).
    weights: None -> the bundled weights (error if the model has none); "random" -> a seeded random init
    (for smoke tests; results are marked as such); a path -> an official or udcbench checkpoint.
    The returned module is in eval mode with frozen parameters; it maps [0,1] images to [0,1] images.
    `info.name` is the plain configuration; `info.extra["options"]` holds every option with its value.
    """
    config, family_name = resolve_name(name)
    entry = MODELS.get(config)
    resolved_options = resolve_options(config, split_options(name)[1], options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = entry.factory(**resolved_options)
    if entry.info.get("weights_free"):
        if weights not in (None, "random"):
            raise SpecError(f"model {config!r} has no trainable weights; drop --weights")
        label = "none (training-free)"
    elif weights is None:
        path = bundled_weights(config)
        if path is None:
            family = entry.info.get("family", config)
            siblings = [n for n in MODELS.names() if n != config and bundled_weights(n)
                        and MODELS.get(n).info.get("family") == family]
            hint = f"; for the family's bundled weights use --model {siblings[0]}" if siblings else ""
            raise SpecError(f"model {config!r} has no bundled weights; pass --weights FILE (an official "
                            f"checkpoint) or --weights random{hint}")
        state, _ = read_state_dict(path)
        _load_checked(net, state, str(path), entry, resolved_options)
        label = f"bundled:{path.name}"
    elif str(weights) == "random":
        label = "random"
    else:
        state, _ = read_state_dict(weights)
        convert = entry.info.get("convert_state")  # e.g. legacy weight-norm keys -> this model's keys
        _load_checked(net, convert(state) if convert else state, str(weights), entry, resolved_options)
        label = str(Path(weights).resolve())
    parameters = sum(p.numel() for p in net.parameters())
    info = ModelInfo(name=config, family=entry.info.get("family", config), weights=label, parameters=parameters,
                     contract=entry.info["contract"], resolved_from=family_name,
                     extra={"paper": entry.info.get("paper", ""), "options": resolved_options})
    model = RestorationModel(net, info).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


__all__ = ["InputContract", "ModelInfo", "RULE", "RestorationModel", "bundled_weights", "family_caption",
           "family_names", "format_model_spec", "load_model", "option_table", "resolve_name", "resolve_options",
           "split_options"]
