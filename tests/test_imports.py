"""The architecture's boundaries, checked on the source: what each room may import, and no cycles.

Read with `ast` (nothing is imported): every `import` / `from ... import` of a populace module, at
module level (imports inside functions are deliberate late imports and are listed apart).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"dsl": "populace.dsl", "compiler": "populace.compiler", "runtime": "populace.runtime",
            "cli": "populace.cli", "populace": "populace"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")
            if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("populace")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("populace"):
                out.add(target)
                out |= {f"{target}.{a.name}" for a in node.names}  # `from . import asking`
    return out


MODULES = _modules()


def _resolve(imported: set[str]) -> set[str]:
    return {m for m in imported if m in MODULES}


@pytest.mark.parametrize("room,forbidden", [
    ("populace.runtime", ("populace.dsl", "populace.cli")),
    ("populace.compiler", ("populace.runtime", "populace.cli")),
    ("populace.dsl", ("populace.compiler", "populace.runtime", "populace.cli")),
    ("populace.runtime.store", ("populace.runtime.engine",)),
    ("populace.runtime.models", ("populace.runtime.engine",)),
    ("populace.runtime.monitor", ("populace.runtime.engine",)),
])
def test_rooms_import_only_what_they_may(room, forbidden):
    bad = [(name, target) for name, path in MODULES.items() if name == room or name.startswith(room + ".")
           for target in _imports(name, path, top_level_only=False) if target.startswith(forbidden)]
    assert bad == []


def test_runtime_reads_only_the_plan_of_the_compiler():
    bad = [(name, target) for name, path in MODULES.items() if name.startswith("populace.runtime")
           for target in _imports(name, path, top_level_only=False)
           if target.startswith("populace.compiler") and not target.startswith("populace.compiler.plan")]
    assert bad == []


def test_no_import_cycles_at_module_level():
    graph = {name: _resolve(_imports(name, path, top_level_only=True)) - {name} for name, path in MODULES.items()}
    # A package's __init__ that re-exports its modules is not a cycle with them.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for name in sorted(graph):
        visit(name)
    assert cycles == []


def test_every_runtime_module_is_under_400_lines():
    long = {name for name, path in MODULES.items() if name.startswith("populace.runtime")
            and len(path.read_text(encoding="utf-8").splitlines()) > 400}
    assert long == set()


def test_each_compiler_pass_is_a_module_of_its_own_that_says_what_it_reads_and_adds():
    from populace.compiler.pipeline import PASSES

    modules = [p.__module__ for p in PASSES]
    assert all(m.startswith("populace.compiler.passes.") for m in modules)
    assert len(set(modules)) == len(modules)  # one pass a module
    for m in modules:
        doc = ast.get_docstring(ast.parse(MODULES[m].read_text(encoding="utf-8"))) or ""
        assert "Reads:" in doc and "Adds:" in doc, m
    # and every module of compiler/passes holds a pass the pipeline runs
    assert {m for m in MODULES if m.startswith("populace.compiler.passes.")} == set(modules)
