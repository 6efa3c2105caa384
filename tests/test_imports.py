"""The package's import graph, read from the source (ast): no import cycle inside udcbench/, the stages import
only earlier stages, and nothing inside the package imports the `udcbench.api` façade."""

import ast
from pathlib import Path

import pytest

import udcbench

PACKAGE = Path(udcbench.__file__).resolve().parent
# data flows left to right; a stage may import the shared modules and any earlier stage, never a later one
SHARED = ("udcbench.errors", "udcbench.registry", "udcbench.spec", "udcbench.version")
STAGES = ("data", "models", "attacks", "defenses", "metrics", "runner", "report", "cli")
# the allowed imports of a later stage, (importer, imported): metrics are pure functions that training, attack
# objectives and defense calibration use too; a defense calibrates with an attack (purify:auto); a finished run
# re-renders its folder's leaderboard
SIDEWAYS = {("models", "metrics"), ("attacks", "metrics"), ("defenses", "attacks"), ("defenses", "metrics"),
            ("runner", "report")}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("udcbench",) + path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known) -> set[str]:
    """The udcbench modules `name` imports anywhere in its source (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        while target and target not in known:  # `from udcbench.x import name`: the module is udcbench.x
            target = target.rpartition(".")[0]
        if target and target != name and target.startswith("udcbench"):
            found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    return found


def stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_the_checker_finds_a_cycle_and_resolves_relative_and_from_imports(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    source = tmp_path / "x.py"
    source.write_text("from . import y\nfrom .y import thing\nimport udcbench.z\ndef f():\n    from udcbench.w import q\n")
    known = {"udcbench.p.x": source, "udcbench.p.y": None, "udcbench.z": None, "udcbench.w": None}
    assert imports("udcbench.p.x", source, known) == {"udcbench.p.y", "udcbench.z", "udcbench.w"}


def test_there_is_no_import_cycle_inside_the_package():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" → ".join(c) for c in found)


def test_nothing_inside_the_package_imports_the_api_facade():
    users = sorted(name for name, targets in graph().items() if "udcbench.api" in targets and name != "udcbench.api")
    assert not users, f"{', '.join(users)} import udcbench.api; import from udcbench.runner instead"


@pytest.mark.parametrize("importer", STAGES)
def test_a_stage_imports_no_later_stage(importer):
    later = STAGES[STAGES.index(importer) + 1:]
    wrong = sorted(f"{name} → {target}" for name, targets in graph().items() if stage(name) == importer
                   for target in targets if stage(target) in later and (importer, stage(target)) not in SIDEWAYS)
    assert not wrong, "imports against the data flow: " + "; ".join(wrong)
