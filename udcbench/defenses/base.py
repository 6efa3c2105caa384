"""The defense protocol: an input transform, a weights swap, or both.

A spec string composes registered components left to right with '+', each optionally with an argument after
':' (`purify:auto+ft`, `jpeg:75`). `make_defense(spec)` validates every component before anything runs.

A component states its settings once, in its class's `settings` ({name: Setting}); `parse_settings` reads
`NAME:key=value,...` against them for every component: unknown keys are one error naming the valid ones, values
are converted by the Setting, and a bare value sets the class's `shorthand` setting (`jpeg:75`, `purify:30`).
Everything else the runner and the reports need comes from hooks with defaults here, so a new defense is one
file (its component class and its `register_defense` call) and its test:

- `ready(model, dataset, seed, device, defense)`: prepare before scoring (networks to the device, calibration);
- `networks()`: the networks whose forward passes count as network passes (a diffusion prior's UNet);
- `record(model_name)`: what the component resolved to, hashed into the run;
- `label(argument, record)` (a classmethod): how reports show the component, from its stored record
  (`defense_label` applies it to a whole spec without building anything).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from udcbench.errors import SpecError
from udcbench.registry import DEFENSES, did_you_mean


@dataclass(frozen=True)
class Setting:
    """One `key=value` setting of a defense component.

    default: its value when not given; parse: text -> value, raising ValueError when the text is not acceptable;
    expected: what parse accepts, for error messages ("an integer", "a quality 1–100"); aliases: other keys for
    it; example: the argument an error suggests (default `key=default`).
    """

    default: Any
    parse: Callable[[str], Any] = str
    expected: str = "text"
    aliases: tuple[str, ...] = ()
    example: str | None = None


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A Setting parser: an integer in [low, high] (a bound None is open)."""
    def parse(text: str) -> int:
        value = int(text.strip())
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{value} is outside [{low}, {high}]")
        return value
    return parse


def positive_number(text: str) -> float:
    """A Setting parser: a finite number > 0."""
    value = float(text.strip())
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{value} is not a finite number > 0")
    return value


def choice(*options: str) -> Callable[[str], str]:
    """A Setting parser: one of `options` (surrounding spaces ignored)."""
    def parse(text: str) -> str:
        if text.strip() not in options:
            raise ValueError(text)
        return text.strip()
    parse.options = options  # for the did-you-mean of an error message
    return parse


def word(text: str) -> str:
    """A Setting parser: the text without surrounding spaces."""
    return text.strip()


_KEYED = re.compile(r"\s*[A-Za-z_]\w*\s*=")


def _key_list(settings: dict[str, Setting]) -> str:
    return ", ".join(alias for key, setting in settings.items() for alias in (key, *setting.aliases))


def _split(name: str, argument: str, settings: dict[str, Setting],
           shorthand: str | None) -> list[tuple[str, str, bool]]:
    """(setting, value text, bare?) for each non-empty piece; one SpecError for every unknown key."""
    keys = {alias: key for key, setting in settings.items() for alias in (key, *setting.aliases)}
    found, unknown, bare = [], [], 0
    for piece in argument.split(","):
        if not piece.strip():
            continue
        key, equals, value = piece.partition("=")
        key = key.strip()
        if not equals and shorthand is not None:
            bare += 1
            if bare > 1:  # `blur:1,5`: one bare value only
                raise _invalid(name, argument, shorthand, settings[shorthand], piece, bare=True)
            found.append((shorthand, piece, True))
        elif key not in keys:
            unknown.append(key or piece.strip())
        elif not value.strip():
            raise SpecError(f"defense {name!r} setting {piece.strip()!r} has no value; write {name}:key=value,… "
                            f"with a key among {_key_list(settings)}")
        else:
            found.append((keys[key], value, False))
    if unknown:
        listing = ", ".join(f"{key}={setting.default}" for key, setting in settings.items())
        named = ", ".join(f"{key}{did_you_mean(key, keys)}" for key in sorted(set(unknown)))
        raise SpecError(f"defense {name!r} has no setting(s) {named}; its settings are "
                        f"{listing} (write {name}:key=value,… with a key among {_key_list(settings)})")
    return found


def _invalid(name: str, argument: str, key: str, setting: Setting, value: str, bare: bool) -> SpecError:
    if bare:  # `jpeg:abc`: what the component takes, with the whole argument
        return SpecError(f"{name} takes {setting.expected}, e.g. {name}:{setting.default}; got '{name}:{argument}'")
    example = setting.example or f"{key}={setting.default}"
    hint = did_you_mean(value.strip(), getattr(setting.parse, "options", ()))
    return SpecError(f"{name} {key}={value.strip()!r}{hint} must be {setting.expected}, e.g. {name}:{example}")


def parse_settings(name: str, argument: str | None, settings: dict[str, Setting], shorthand: str | None = None,
                   verbatim: bool = False) -> dict[str, Any]:
    """The settings `argument` gives, {setting: value} (defaults are not filled in), read against `settings`.

    `NAME:key=value,...` with keys among the settings and their aliases (the last of a repeated key wins); a
    piece without '=' is the `shorthand` setting's value (`jpeg:75`, `purify:auto,loss=1`), at most one.
    verbatim: the whole argument is the shorthand's value unless it starts with `key=` (`ft:FILE`, where FILE
    may hold ',' or '='). A component without settings takes no argument. SpecError for anything else.

        parse_settings("jpeg", "75", JPEGCompression.settings, "quality") == {"quality": 75}
    """
    if argument is None:
        return {}
    if not settings:
        raise SpecError(f"defense {name!r} takes no argument, got '{name}:{argument}'")
    if verbatim and shorthand is not None and not _KEYED.match(argument):
        pieces = [(shorthand, argument, True)]
    else:
        pieces = _split(name, argument, settings, shorthand)
    given = {}
    for key, value, bare in pieces:
        try:
            given[key] = settings[key].parse(value)
        except ValueError:
            raise _invalid(name, argument, key, settings[key], value, bare) from None
    return given


class DefenseComponent:
    """One stage: `transform` maps [0,1] inputs to [0,1] inputs; `swap_weights` may return another model.

    Class attributes: `name` (as registered), `settings` ({key: Setting}: everything `NAME:key=value` may set),
    `shorthand` (the setting a bare value sets), `verbatim` (see `parse_settings`), `randomized`.
    """

    name = "component"
    settings: dict[str, Setting] = {}
    shorthand: str | None = None
    verbatim = False
    randomized = False  # draws randomness in transform (adaptive attacks then use EOT)

    def __init__(self, argument: str | None = None):
        self.argument = argument

    @classmethod
    def parse(cls, argument: str | None) -> dict[str, Any]:
        """The settings the argument gives (`parse_settings` against the class's settings)."""
        return parse_settings(cls.name, argument, cls.settings, cls.shorthand, cls.verbatim)

    @classmethod
    def configure(cls, argument: str | None) -> dict[str, Any]:
        """Every setting: the argument's, else the default."""
        return {**{key: setting.default for key, setting in cls.settings.items()}, **cls.parse(argument)}

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return image

    def differentiable_transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The transform as an adaptive attack differentiates it: exact in value; components whose transform
        has no useful gradient (JPEG, quantisation) override this with BPDA."""
        return self.transform(image, generator)

    def swap_weights(self, model):
        return model

    def ready(self, model, dataset, seed: int, device, defense: "Defense") -> None:
        """Prepare before scoring — here: `networks()` to `device`. Components that calibrate on the run's data
        (purify:auto) do it here, with the undefended `model`, the run's `dataset` and `seed`, and the whole
        `defense` they belong to. Idempotent."""
        for network in self.networks():
            network.to(device)

    def networks(self) -> list[torch.nn.Module]:
        """The networks this component runs whose forward passes count as network passes (a diffusion prior's
        noise-prediction network). Swapped-in restoration models are counted as models, not here."""
        return []

    def record(self, model_name: str) -> dict:
        """What this component resolved to for `model_name` — settings and digests of any weights it loads.
        Written with every row and hashed into the run, so new weights never reuse old results."""
        return {}

    @classmethod
    def label(cls, argument: str | None, record: dict | None) -> str:
        """How reports show this component: its part of the spec (argument None: no ':'), rewritten from its
        stored record where that says more (purify:auto shows the t* it chose). Builds nothing."""
        return cls.name if argument is None else f"{cls.name}:{argument}"


@dataclass
class Defense:
    spec: str
    components: list[DefenseComponent]

    def transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for component in self.components:
            image = component.transform(image, generator)
        return image

    def differentiable_transform(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for component in self.components:
            image = component.differentiable_transform(image, generator)
        return image

    @property
    def smoother(self) -> DefenseComponent | None:
        """The smoothing component (`smooth`), which wraps the whole system, or None."""
        return next((c for c in self.components if getattr(c, "smooths", False)), None)

    def restore(self, model, image: torch.Tensor, generator: torch.Generator, differentiable: bool = False,
                keep: bool = False):
        """The defended system's output for `image`: model(transform(image)) (`differentiable`: the transform as
        an adaptive attack differentiates it). With a smoothing component, its median over noisy copies of
        `image` through that system; keep=True returns (output, the sorted samples or None)."""
        transform = self.differentiable_transform if differentiable else self.transform
        smoother = self.smoother
        if smoother is not None:
            return smoother.smooth(model, transform, image, generator, differentiable, keep)
        output = model(transform(image, generator))
        return (output, None) if keep else output

    @property
    def randomized(self) -> bool:
        return any(component.randomized for component in self.components)

    def prepare_model(self, model):
        from udcbench.models.memory import is_checkpointing, set_checkpointing

        swapped = model
        for component in self.components:
            swapped = component.swap_weights(swapped)
        if swapped is not model and is_checkpointing(model):  # --memory low carries over to fine-tuned weights
            set_checkpointing(swapped, True)
        return swapped

    def ready(self, model, dataset, seed: int, device) -> None:
        """Every component's `ready`, in order (the undefended `model`, the run's dataset, seed and device)."""
        for component in self.components:
            component.ready(model, dataset, seed, device, self)

    def networks(self) -> list[torch.nn.Module]:
        """The components' counted networks (`DefenseComponent.networks`)."""
        return [network for component in self.components for network in component.networks()]

    def record(self, model_name: str) -> list[dict]:
        """The components' records (`DefenseComponent.record`), for those that have one."""
        return [{"component": c.name, **found} for c in self.components if (found := c.record(model_name))]

    @property
    def is_identity(self) -> bool:
        return all(c.name == "none" for c in self.components)


def parse_defense(spec: str) -> list[tuple[str, str | None]]:
    """'purify:auto+ft' -> [('purify', 'auto'), ('ft', None)]."""
    text = (spec or "").strip()
    if not text:
        raise SpecError("empty defense; use --defense none, or compose registered defenses like a+b")
    parts = []
    for piece in text.split("+"):
        name, _, argument = piece.strip().partition(":")
        if not name:
            raise SpecError(f"defense {spec!r} has an empty component; write components joined by '+', e.g. a+b")
        parts.append((name, argument or None))
    return parts


def make_defense(spec: str) -> Defense:
    components = []
    for name, argument in parse_defense(spec):
        entry = DEFENSES.get(name)
        components.append(entry.factory(argument))
    smoothing = [index for index, c in enumerate(components) if getattr(c, "smooths", False)]
    if smoothing and (len(smoothing) > 1 or smoothing[0] != len(components) - 1):
        raise SpecError(f"defense {spec.strip()!r}: smoothing wraps the whole defended system, so give one smooth "
                        "component, last (e.g. purify+smooth:sigma=0.25)")
    return Defense(spec=spec.strip(), components=components)


def component_class(name: str) -> type[DefenseComponent] | None:
    """The component class registered as `name` (the factory itself, or the entry's `component` info when the
    factory is a function); None for a name not registered."""
    if name not in DEFENSES.names():
        return None
    entry = DEFENSES.get(name)
    found = entry.info.get("component", entry.factory)
    return found if isinstance(found, type) and issubclass(found, DefenseComponent) else None


def _records(params) -> list[dict]:
    if not isinstance(params, str):
        return []
    try:
        found = json.loads(params)
    except ValueError:
        return []
    return [record for record in found if isinstance(record, dict)] if isinstance(found, list) else []


def defense_label(spec: str, params: str | None) -> str:
    """The defense as reports show it, without building it: each '+' part of `spec` as its registered class
    labels it (`DefenseComponent.label`) from its record in `params` (the JSON list `Defense.record` wrote with
    the row, or None); the k-th part named X gets the k-th record of component X. Unregistered parts stay.

        defense_label("purify:auto+ft", '[{"component": "purify", "t_star": 30, "auto": {...}}, ...]')
        == "purify:auto(t*=30)+ft"
    """
    if not isinstance(spec, str):
        return spec
    records, seen = _records(params), {}
    parts = []
    for part in spec.split("+"):
        name, colon, argument = part.partition(":")
        found = component_class(name)
        if found is None:
            parts.append(part)
            continue
        mine = [record for record in records if record.get("component") == name]
        index = seen[name] = seen.get(name, -1) + 1
        parts.append(found.label(argument if colon else None, mine[index] if index < len(mine) else None))
    return "+".join(parts)
