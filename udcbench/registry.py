"""Name -> factory registries for models, attacks, defenses, datasets and metrics.

Registration is explicit: a decorator in the file that defines the thing. Third-party packages add entries
through entry points (groups `udcbench.models`, `udcbench.attacks`, `udcbench.defenses`, `udcbench.datasets`,
`udcbench.metrics`): each entry point names a module whose import runs its decorators. No folder scanning.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, Callable

from udcbench.errors import UnknownNameError


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

    def __init__(self, kind: str, builtin_modules: tuple[str, ...]):
        self.kind = kind
        self._builtin_modules = builtin_modules
        self._entries: dict[str, Entry] = {}
        self._loaded = False

    def register(self, name: str, **info: Any) -> Callable:
        def decorate(factory: Callable) -> Callable:
            if name in self._entries and self._entries[name].factory is not factory:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
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
            point.load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; known {self.kind}s: "
                                   f"{', '.join(sorted(self._entries))} (see `udcbench list {self.kind}s`)")
        return self._entries[name]


MODELS = Registry("model", ("udcbench.models.uformer", "udcbench.models.nafnet", "udcbench.models.restormer",
                            "udcbench.models.ecfnet", "udcbench.models.udcunet", "udcbench.models.dagf",
                            "udcbench.models.discnet", "udcbench.models.bnudc", "udcbench.models.dwformer",
                            "udcbench.models.wiener"))
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
