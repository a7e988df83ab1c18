"""The tree keeps the shape docs/architecture.md draws: a pure core, layers that import
only downwards, and no function too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "ampelios"
MAX_FUNCTION_LINES = 150
# Each layer, lowest first, with what it may import of Ampelios besides itself and the
# layers before it (docs/architecture.md, "The tree").
LAYERS = [
    "core",
    "config",
    "internals",
    "services",
    "topology",
    "engine",
    "sinks",
    "runtime",
    "ingest",
    "processors",
    "api",
    "worker",
]
OUTSIDE_THE_CORE = {"faust", "aiokafka", "aiohttp", "aiopg", "psycopg2", "mode"}


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(PACKAGE.rglob("*.py"))]


def imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def layer_of(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if parts[0] == "ampelios" and len(parts) > 1 and parts[1] in LAYERS else None


def test_no_function_is_longer_than_a_screenful_or_two():
    long = [
        f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_core_is_pure_and_every_layer_imports_only_the_layers_below_it():
    upward = []
    for path, tree in modules():
        here = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if here not in LAYERS:
            continue  # the top: cli, app, bench, web
        for name in imported(tree):
            if here == "core" and name.split(".")[0] in OUTSIDE_THE_CORE:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name} (the core has no framework)")
            there = layer_of(name)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                upward.append(f"{path.relative_to(PACKAGE)} ({here}) imports {name} ({there})")
    assert upward == []
