"""Install a one-file plugin as a distribution would: the module plus a dist-info naming it in an entry-point
group, on sys.path, with the registry re-reading its entry points (and restored afterwards)."""

import importlib
import sys


def install_plugin(tmp_path, monkeypatch, registry, module: str, source: str, entry: str) -> None:
    site = tmp_path / "site"
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[udcbench.{registry.kind}s]\n{entry} = {module}\n")
    registry.names()  # the built-in entries first: their modules register only when first imported
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))  # restored after the test
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.delitem(sys.modules, module, raising=False)
