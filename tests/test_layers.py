"""The layer table of ../shared/DESIGN.md, held by the import graph: every import (at module level
or inside a function) of `studio`, `evaluation` and `models` points down or sideways, never up,
and no two modules reach each other."""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("studio", "evaluation", "models")
LAYERS = ["studio", "evaluation", "training harness and recipes", "pipelines", "backends", "shared blocks"]
# models.<these> are the shared blocks
SHARED = {"audio", "text", "vocoder", "registry", "roles", "config", "modules", "files", "data"}


def layer(module: str) -> int:
    """The rank of a module in LAYERS (0 is the top). Any other `models.<name>` is a backend, so a new
    backend file needs no edit here."""
    parts = module.split(".")
    if parts[0] in ("studio", "evaluation"):
        return LAYERS.index(parts[0])
    if parts[0] != "models" or len(parts) == 1:
        raise AssertionError(f"{module} is in no layer")
    if parts[1] == "training":
        return LAYERS.index("training harness and recipes")
    if parts[1] == "pipelines":
        return LAYERS.index("pipelines")
    return LAYERS.index("shared blocks" if parts[1] in SHARED else "backends")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a `from package import module` names the module)."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
                               for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{source} ({LAYERS[layer(source)]}) imports {target} ({LAYERS[layer(target)]})"
                  for source, targets in graph.items() for target in targets if layer(target) < layer(source))


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import loop found by a depth-first walk, as `a -> b -> a`."""
    found, done = [], set()

    def walk(node: str, stack: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in stack:
                found.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in done:
                walk(target, stack + [target])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            walk(node, [node])
    return found


def test_no_import_points_up_the_layer_table():
    upward = upward_imports(import_graph())
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    loops = cycles(import_graph())
    assert not loops, "\n".join(loops)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"models.sled": {"evaluation.metrics", "models.audio"}, "evaluation.metrics": {"models.audio"},
             "evaluation.report": {"evaluation.runner"}, "evaluation.runner": {"evaluation.report"},
             "models.audio": set()}
    assert upward_imports(graph) == ["models.sled (backends) imports evaluation.metrics (evaluation)"]
    assert cycles(graph) == ["evaluation.report -> evaluation.runner -> evaluation.report"]
