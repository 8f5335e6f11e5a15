"""The package's shape (ARCHITECTURE.md): no import cycles, counting imports inside functions, except the
plugin registries; no module importing another module's private names; the training loop file short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medvideocap"
#: A registry imports its plugins by name, and each plugin imports the registry's base class: the one
#: sanctioned kind of cycle. Registry module -> the package its plugins live in.
REGISTRIES = {
    "medvideocap.build.stages": "medvideocap.build.stages",  # make_stage: build stages
    "medvideocap.eval.metrics": "medvideocap.eval.metrics",  # METRICS: evaluation metrics
    "medvideocap.caption.base": "medvideocap.caption",  # make_captioner: caption backends
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (top level, in functions, under TYPE_CHECKING
    excluded: those never run)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        is_package = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        type_only: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only.update(id(n) for child in node.body for n in ast.walk(child))
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, node, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name and t.startswith("medvideocap"):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def is_registry_cycle(component: list[str]) -> bool:
    return any(
        registry in component and all(m == package or m.startswith(package + ".") for m in component)
        for registry, package in REGISTRIES.items()
    )


def test_no_import_cycles_except_plugin_registries() -> None:
    found = [c for c in cycles(imports(modules())) if not is_registry_cycle(c)]
    assert not found, f"import cycles: {found}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    roots = [PACKAGE, PACKAGE.parent / "tests", PACKAGE.parent / "benchmarks"]
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medvideocap"):
                private = [
                    a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                ]
                if private:
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {private}")
    assert not offenders, offenders


@pytest.mark.parametrize("limit_lines,limit_train", [(400, 120)])
def test_the_training_loop_reads_in_ten_minutes(limit_lines: int, limit_train: int) -> None:
    loop = PACKAGE / "train" / "loop.py"
    source = loop.read_text()
    assert len(source.splitlines()) <= limit_lines
    (train,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    assert (train.end_lineno or 0) - train.lineno + 1 <= limit_train
