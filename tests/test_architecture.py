"""The package's import graph keeps the layers of docs/architecture.md: no module imports a higher layer, and
no two modules import each other (directly or round a longer circle).

Every ``import`` of a ``ray_distill`` module counts, wherever it stands: at module level, inside a function,
under ``if TYPE_CHECKING``. A deferred import only moves its cost to call time; the dependency is the same,
and an upward one is a circle waiting for the next import. What does not count is Python's implicit import of
a package's ``__init__`` before its submodule: a package that re-exports its modules would otherwise form a
circle with each of them. The layers are read from the table in docs/architecture.md, so the document and
the code cannot drift apart: a module that fits no row fails here, and so does a row naming no module.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ray_distill"
DOC = ROOT / "docs" / "architecture.md"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, source: str, known: set[str], is_package: bool = False) -> list[tuple[str, int]]:
    """``(imported module, line)`` of every import of a package module in module ``name``'s source, at any depth."""
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != PACKAGE:
                continue
            # `from ray_distill import columns` imports the module ray_distill.columns; `from x import f`, x itself
            out += [(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, node.lineno) for a in node.names]
    return out


@functools.cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}; self-imports (a package naming its own submodules) dropped."""
    mods = modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges[name] = {}
        for target, line in imports(name, path.read_text(), set(mods), path.name == "__init__.py"):
            if target != name:
                edges[name].setdefault(target, line)
    return edges


def layers() -> dict[str, int]:
    """``{module or package (dotted, under ray_distill): layer}`` from the table rows ``| <layer> | `name`, ... |``."""
    table = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                assert name not in table, f"docs/architecture.md names {name} in two layers"
                table[name] = int(m.group(1))
    assert table, "docs/architecture.md has no layer table (rows '| <layer> | `module`, ... |')"
    return table


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """The layer of the longest table name that is ``module`` or a package above it (``data.fs`` before ``data``)."""
    parts = module.split(".")[1:]
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in table:
            return table[".".join(parts[:i])]
    return None


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (strongly connected, more than one)."""
    reach = {}
    for start in edges:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    groups = {frozenset([a] + [b for b in reach[a] if a in reach.get(b, ())]) for a in edges if a in reach[a]}
    return sorted(sorted(g) for g in groups)


def test_every_module_has_a_layer_and_every_row_a_module():
    mods = modules()
    table = layers()
    lost = [m for m in mods if m != PACKAGE and layer_of(m, table) is None]
    assert not lost, f"modules in no layer of docs/architecture.md: {lost}"
    stale = [n for n in table if not any(m == f"{PACKAGE}.{n}" or m.startswith(f"{PACKAGE}.{n}.") for m in mods)]
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
    assert not graph()[PACKAGE], "ray_distill/__init__.py holds the version only and imports nothing"


def upward(edges: dict[str, dict[str, int]], table: dict[str, int]) -> list[str]:
    """Every import of a module in a higher layer than the importer's, as one line each."""
    out = []
    for a, targets in edges.items():
        for b, line in targets.items():
            low, high = layer_of(a, table), layer_of(b, table)  # None: in no layer (the first test says which)
            if low is not None and high is not None and high > low:
                out.append(f"{a} (layer {low}) imports {b} (layer {high}) at line {line}")
    return out


def test_no_module_imports_a_higher_layer():
    found = upward(graph(), layers())
    assert not found, "upward imports:\n" + "\n".join(found)


def test_no_import_circles():
    edges = graph()
    found = circles(edges)
    detail = ["  " + " <-> ".join(g) + ": " + "; ".join(f"{a} -> {b} (line {edges[a][b]})" for a in g
                                                       for b in g if b in edges[a]) for g in found]
    assert not found, "import circles:\n" + "\n".join(detail)


def test_the_checks_see_a_circle_and_an_upward_import():
    """The helpers on a hand-made graph: a deferred import inside a function counts like a module-level one."""
    edges = {"ray_distill.config": {"ray_distill.curation.judge": 3},
             "ray_distill.curation.judge": {"ray_distill.curation.graders": 9},
             "ray_distill.curation.graders": {"ray_distill.config": 7},
             "ray_distill.columns": {}}
    assert circles(edges) == [["ray_distill.config", "ray_distill.curation.graders", "ray_distill.curation.judge"]]
    table = {"columns": 0, "config": 1, "curation": 4}
    assert upward(edges, table) == [
        "ray_distill.config (layer 1) imports ray_distill.curation.judge (layer 4) at line 3"]
    del edges["ray_distill.config"]["ray_distill.curation.judge"]
    assert circles(edges) == [] and upward(edges, table) == []
    assert layer_of("ray_distill.data.fs", {"data": 2, "data.fs": 0}) == 0
    assert layer_of("ray_distill.data.dev", {"data": 2, "data.fs": 0}) == 2
    src = "def f():\n    from ray_distill.pipeline import run_job\n    from ..columns import QUESTION\n" \
          "from ray_distill import columns as C, config\nimport ray_distill.data.fs\n"
    known = {"ray_distill.pipeline", "ray_distill.columns", "ray_distill.data.fs"}
    assert sorted(imports("ray_distill.curation.probe", src, known)) == [
        ("ray_distill", 4), ("ray_distill.columns", 3), ("ray_distill.columns", 4), ("ray_distill.data.fs", 5),
        ("ray_distill.pipeline", 2)]
