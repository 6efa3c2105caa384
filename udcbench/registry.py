"""Name -> factory registries for models, attacks, defenses, datasets and metrics.

Registration is explicit: a decorator in the file that defines the thing. Third-party packages add entries
through entry points (groups `udcbench.models`, `udcbench.attacks`, `udcbench.defenses`, `udcbench.datasets`,
`udcbench.metrics`): each entry point names a module whose import runs its decorators. No folder scanning.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, Callable, Iterable

from udcbench.errors import PluginError, UdcbenchError, UnknownNameError


def _edits(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn a into b (optimal string alignment)."""
    previous, row = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous[j - 2] + 1)
        previous, row = row, current
    return row[-1]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" (did you mean 'steps'?)" for the known name a misspelt `name` most likely meant, else "".

    A typo is a few edits away (at most one per three characters: `step`, `tstar`, `pdg`, `ufromer`); a longer
    name with more typos still counts when difflib finds it close (ratio ≥ 0.8). `steps` is not offered `eps`.
    """
    text, names = str(name).lower(), sorted({str(k) for k in known})
    if not text or not names:
        return ""
    edits, _, best = min((_edits(text, k.lower()), -difflib.SequenceMatcher(None, text, k.lower()).ratio(), k)
                         for k in names)
    if 0 < edits <= max(1, len(text) // 3):
        return f" (did you mean {best!r}?)"
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != str(name) else ""


def module_available(module: str) -> bool:
    """Whether `module` is installed (found without importing it; an installed module may still fail to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Extra:
    """An optional extra of pyproject.toml ([project.optional-dependencies]) and the modules it installs.

    A registered entry that needs one says so with `extra="NAME"` (and `extra_for="prior=DIR"` when only some of
    its settings need it); `udcbench list` shows whether it is installed and the command that installs it.
    """

    name: str
    modules: tuple[str, ...]

    @property
    def install(self) -> str:
        """The install command: pinned by constraints.txt, so it never replaces the installed torch."""
        return f"pip install -c constraints.txt 'udcbench[{self.name}]'"

    def installed(self) -> bool:
        return all(module_available(module) for module in self.modules)

    def status(self, scope: str = "") -> str:
        """'xcheck (installed)' or "xcheck (not installed: pip install -c constraints.txt 'udcbench[xcheck]')";
        scope: when it is needed ('for prior=DIR')."""
        label = f"{self.name} {scope}".strip()
        return f"{label} (installed)" if self.installed() else f"{label} (not installed: {self.install})"


EXTRAS = {extra.name: extra for extra in (
    Extra("xcheck", ("advertorch", "foolbox")), Extra("diffusers", ("diffusers",)), Extra("ray", ("ray",)),
    Extra("data", ("skimage",)), Extra("pyiqa", ("pyiqa",)))}


def needs_met(needs: str, check: Callable[[], None] | None) -> str:
    """A descriptor's `needs` with whether this machine has it (its `check` passes): '... (found)' or
    '... (not found here)'; '-' when it needs nothing."""
    if not needs:
        return "-"
    if check is None:
        return needs
    try:
        check()
    except UdcbenchError:
        return f"{needs} (not found here)"
    return f"{needs} (found)"


def needs(entry: "Entry") -> str:
    """What a registered entry needs besides udcbench's own dependencies, for `udcbench list` ('-': nothing)."""
    name = entry.info.get("extra")
    return EXTRAS[name].status(entry.info.get("extra_for", "")) if name else "-"


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """One configuration option of a registered entry (`register_model(..., options={"key": Option(...)})`).

    `parse` turns the command-line text (`NAME:key=value`) into the value and raises ValueError with the
    reason when the text is not acceptable; `help` is one line for listings and error messages.
    """

    default: Any
    help: str
    parse: Callable[[str], Any] = str


class Registry:
    """A small name -> Entry map for one kind of thing."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...], required: tuple[str, ...] = ()):
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._required = required  # keys every entry must register, e.g. a model's contract
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, **info: Any) -> Callable:
        def decorate(factory: Callable) -> Callable:
            if name in self._entries and self._entries[name].factory is not factory:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            missing = [key for key in self._required if key not in info]
            if missing:
                raise ValueError(f"{self.kind} {name!r} registers no {', '.join(missing)}= (required for every "
                                 f"{self.kind}; e.g. register_model({name!r}, contract=InputContract(...)))")
            if info.get("extra") is not None and info["extra"] not in EXTRAS:
                raise ValueError(f"{self.kind} {name!r} names the extra {info['extra']!r}; known extras: "
                                 f"{', '.join(EXTRAS)}")
            self._entries[name] = Entry(name, factory, info)
            return factory
        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            import_module(module)
        for point in metadata.entry_points(group=f"udcbench.{self.kind}s"):
            load_plugin(point)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            hint = did_you_mean(name, self._entries)
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; known {self.kind}s: "
                                   f"{', '.join(sorted(self._entries))} (see `udcbench list {self.kind}s`)")
        return self._entries[name]


def load_plugin(point: metadata.EntryPoint) -> None:
    """Import one third-party entry point; a package that fails to import or registers an incomplete entry is
    one error naming the package and the fix, not a traceback in every command."""
    try:
        point.load()
    except Exception as error:  # a plugin may raise anything while it is imported
        dist = getattr(point, "dist", None)
        package = getattr(dist, "name", None) or point.value.split(":")[0].split(".")[0]
        reason = " ".join(str(error).split()) or type(error).__name__
        raise PluginError(f"the installed package {package!r} fails to load its entry point "
                          f"{point.name} = {point.value} (group {point.group}): {reason}; fix it, or uninstall it "
                          f"with pip uninstall {package}") from None


MODELS = Registry("model", ("udcbench.models.uformer", "udcbench.models.nafnet", "udcbench.models.restormer",
                            "udcbench.models.ecfnet", "udcbench.models.udcunet", "udcbench.models.dagf",
                            "udcbench.models.discnet", "udcbench.models.bnudc", "udcbench.models.dwformer",
                            "udcbench.models.wiener"), required=("contract",))
ATTACKS = Registry("attack", ("udcbench.attacks.pgd", "udcbench.attacks.fgsm", "udcbench.attacks.pgd_l2",
                              "udcbench.attacks.momentum", "udcbench.attacks.cw", "udcbench.attacks.lpips_pgd",
                              "udcbench.attacks.transfer",
                              "udcbench.attacks.simba", "udcbench.attacks.square",
                              "udcbench.attacks.backends"))
DEFENSES = Registry("defense", ("udcbench.defenses.transforms", "udcbench.defenses.finetune",
                                "udcbench.defenses.purify", "udcbench.defenses.smooth"))
DATASETS = Registry("dataset", ("udcbench.data.datasets", "udcbench.data.formats"))
METRICS = Registry("metric", ("udcbench.metrics.fidelity", "udcbench.metrics.lpips"))

register_model = MODELS.register
register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_dataset = DATASETS.register
register_metric = METRICS.register
