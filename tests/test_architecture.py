"""The package's structure: no import cycle among the modules of src/mlrkit, declared hooks only.

The import walk is self-contained (no ../shared tool at CI time): every ``import``/``from ... import``
anywhere in a module (function level too) is an edge; ``from mlrkit.a import b`` points at the module
``mlrkit.a.b`` when there is one, else at ``mlrkit.a``; a package's ``__init__`` is a node like any
other, except that a submodule importing its own package is not an edge (Python runs the
package first anyway).
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlrkit

SRC = Path(mlrkit.__file__).resolve().parent.parent


def module_graph(src: Path) -> dict[str, set[str]]:
    files = {}
    for p in sorted((src / "mlrkit").rglob("*.py")):
        name = ".".join(p.relative_to(src).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = p

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in files}
    for m, p in files.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t) if t == "mlrkit" or t.startswith("mlrkit.") else None
                if r and r != m and not (files[r].name == "__init__.py" and m.startswith(r + ".")):
                    edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path / "mlrkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from mlrkit.sub import b  # package re-export: fine\n")
    (pkg / "a.py").write_text("def f():\n    from mlrkit.sub.b import g  # function level counts\n")
    (pkg / "sub" / "b.py").write_text("from mlrkit import a\n")
    (pkg / "sub" / "c.py").write_text("from . import b\nfrom .. import a\n")
    edges = module_graph(tmp_path)
    assert edges["mlrkit.sub.c"] == {"mlrkit.sub.b", "mlrkit.a"}
    assert cycles(edges) == [["mlrkit.a", "mlrkit.sub.b"]]
    (pkg / "sub" / "b.py").write_text("import os\n")
    assert cycles(module_graph(tmp_path)) == []


def test_no_import_cycle_in_mlrkit():
    edges = module_graph(SRC)
    assert "mlrkit.engine.trainer" in edges and len(edges) > 50
    found = cycles(edges)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_loose_modules_beside_the_layers():
    """Top-level modules are the package's foundations only; everything else lives in a layer's package."""
    top = sorted(p.stem for p in (SRC / "mlrkit").glob("*.py"))
    assert top == ["__init__", "__main__", "config", "config_versions", "errors", "labels", "metrics",
                   "metrics_groups", "registry", "schema", "utils"]


def test_metric_modules_import_no_upper_layer():
    """Metrics are pure: they never import the engine, the methods, the CLI or a dataset name."""
    edges = module_graph(SRC)
    for m in ("mlrkit.metrics", "mlrkit.metrics_groups", "mlrkit.labels"):
        upper = [e for e in edges[m] if e.startswith(("mlrkit.engine", "mlrkit.methods", "mlrkit.cli"))]
        assert not upper, f"{m} imports {upper}"
    assert "openimages" not in (SRC / "mlrkit" / "metrics_groups.py").read_text()
