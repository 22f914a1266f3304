"""The import graph of the code we ship has no cycle, and the library sits below the KFP layer.

The graph is read from the source (``ast``), so nothing is imported or run: one node per module of
``lmforge`` (src/lmforge), ``lmforge_components`` (components/) and ``lmforge_pipelines``
(pipelines/), tests left out. An edge is any import: at the top, inside a function, or under
``TYPE_CHECKING`` (a cycle through a type hint is still two modules that need each other), and
the ``"module:function"`` strings the CLI hands to ``importlib``. Without a cycle the modules
stand in layers and no import runs back up; a new package is checked as soon as it exists.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "lmforge": REPO / "src" / "lmforge",
    "lmforge_components": REPO / "components",
    "lmforge_pipelines": REPO / "pipelines",
}
# The one cycle left: MLflow tracking (``lmforge.tracking``) and the trainer's tolerant tracker
# (``lmforge.train.tracker``, which replays what an outage buffered) use each other; tracking is
# being made a package of separate concerns, which removes it. Any other cycle fails.
ALLOWED_CYCLE = {"lmforge.tracking", "lmforge.train.tracker"}
STEP_REF = re.compile(r"^(lmforge(?:_components|_pipelines)?(?:\.\w+)*):\w+$")


def module_files() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1].startswith("test_") or parts[-1] == "conftest":
                continue
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every dotted name ``tree`` imports (``from a import b``: ``a.b``, a module or a name);
    ``package`` anchors relative imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level-1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names |= {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if match := STEP_REF.match(node.value):  # "lmforge.train.pretrain:pretrain"
                names.add(match.group(1))
        elif isinstance(node, ast.JoinedStr) and node.values:  # f"lmforge_pipelines.{name}..."
            head = node.values[0]
            if isinstance(head, ast.Constant) and str(head.value).startswith("lmforge"):
                names.add(str(head.value).rstrip("."))
    return names


@functools.cache
def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = resolve(imported_names(tree, package), modules) - {module}
    return graph


def resolve(names: set[str], modules: dict[str, Path]) -> set[str]:
    """The modules ``names`` live in (a function or class: the module defining it)."""
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def reachable(graph: dict[str, set[str]], roots: set[str]) -> set[str]:
    """``roots`` and every module they import, directly or not."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_whole():
    """The reader sees what the tests below rely on: the CLI's step strings, the pipelines."""
    graph = import_graph()
    assert "lmforge.train.pretrain" in graph["lmforge.cli"]
    assert "lmforge_pipelines.compile" in graph["lmforge.cli"]
    assert "lmforge_pipelines" in graph["lmforge_pipelines.compile"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    left = [c for c in cycles(import_graph()) if set(c) != ALLOWED_CYCLE]
    assert not left, "import cycles (move the shared piece into a module both can import):\n" + (
        "\n".join(" <-> ".join(c) for c in left)
    )


def test_the_library_never_imports_components_or_pipelines():
    """``lmforge`` is the layer below the KFP packages; only the CLI, on top, calls into them."""
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module.startswith("lmforge.") and module != "lmforge.cli"
        for target in targets
        if target.startswith(("lmforge_components", "lmforge_pipelines"))
    )
    assert not upward, "the library imports the KFP packages above it:\n" + "\n".join(upward)


# Packages (a subpackage of lmforge, or a top-level module of it, or one of the KFP packages)
# that reach each other today through the tracking knot: tracking <-> train.tracker (above), and
# model_logging <-> registry (MLflow lineage, issue 31), which data and lineage join through
# tracking. The tracking package removes it; this set may only shrink.
ALLOWED_KNOT = {
    "lmforge.data",
    "lmforge.lineage",
    "lmforge.model_logging",
    "lmforge.registry",
    "lmforge.tracking",
    "lmforge.train",
}


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "lmforge" or len(parts) == 1:
        return parts[0]
    is_package = (PACKAGES["lmforge"] / parts[1] / "__init__.py").exists()
    return ".".join(parts[:2]) if is_package else module


def test_no_package_imports_back_up():
    """Between packages, too, imports run one way (a package that imports one that imports it
    back is a layer that runs up), but for the named knot."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        ours = package_of(module)
        graph.setdefault(ours, set()).update(
            package_of(t) for t in targets if package_of(t) != ours
        )
    left = [c for c in cycles(graph) if not set(c) <= ALLOWED_KNOT]
    assert not left, "packages that import each other:\n" + "\n".join(" <-> ".join(c) for c in left)
