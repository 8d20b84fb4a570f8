"""The package's import graph keeps the design's rules (the developers' guide):

- no import circle between modules (imports inside functions count too: a lazy
  import is still an arrow);
- no arrow from a lower folder (``theory/``, ``curvature/``, ``networks/``, the
  verdict and simulator modules) up into ``app/``; only the package's public
  namespace (``stability/__init__.py``) re-exports from ``app/``;
- no private name (``_x``) imported from another module of the package.

Read from the source with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "stability"


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _graph():
    mods = _modules()
    edges, private = {}, []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if not source.startswith("stability"):
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in mods:
                        out.add(sub)
                        continue
                    out.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {alias.name} from {source}")
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("stability")}
        out.discard(name)
        edges[name] = {m for m in out if m in mods}
    return edges, private


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    edges, _ = _graph()
    assert "stability.accessibility" in edges
    assert "stability.curvature.hessian_spectrum" in edges["stability.accessibility"]


def test_no_import_circle():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_cycle_finder_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_arrow_up_into_app():
    edges, _ = _graph()
    up = sorted(
        (m, o)
        for m, out in edges.items()
        for o in out
        if o.startswith("stability.app") and not m.startswith("stability.app") and m != "stability"
    )
    assert up == []


def test_no_private_name_imported_across_modules():
    _, private = _graph()
    assert private == []
