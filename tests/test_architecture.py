"""The import graph: every arrow points down to the core, and no module imports itself back.

Each top-level folder is one deployable (README, "Layout"; docs/architecture.md). Imports inside
functions count: a lazy import is still a dependency of the deployable that runs it.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOTTED = re.compile(r"^[a-z_][\w./]*(:\w+)?$")
PACKAGES = ("ichseg", "serving", "functions", "training", "model_export", "infrastructure", "client", "gateway")

# What each layer may import (besides itself and third-party libraries). The core library is
# ``ichseg`` without ``ichseg.pipeline``; the AWS application's stages live in ``ichseg.pipeline``.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "pipeline": {"core"},
    "serving": {"core"},
    "training": {"core"},
    "model_export": {"core", "training"},
    "functions": {"core", "pipeline"},
    "infrastructure": {"core", "pipeline", "functions", "serving", "client", "gateway"},
    "client": set(),  # speaks only HTTP: runs on a laptop without the AWS side or the model
    "gateway": {"core", "pipeline"},  # the DICOM gateway: its own container, beside the functions
}


def layer(module: str) -> str | None:
    """The layer a first-party module belongs to (None: third-party or standard library)."""
    if module == "ichseg.pipeline" or module.startswith("ichseg.pipeline."):
        return "pipeline"
    top = module.split(".")[0]
    if top == "ichseg":
        return "core"
    return top if top in PACKAGES else None


def modules() -> dict[str, Path]:
    """Every first-party module, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The first-party modules ``name`` imports, at any depth of its code."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import submodule` depends on the submodule, not the package's __init__
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


GRAPH = {name: set(imports_of(name, path, modules())) for name, path in modules().items()}


def test_every_arrow_points_down_to_the_core() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in GRAPH.items()
        for target in targets
        if (a := layer(source)) != (b := layer(target)) and b not in ALLOWED[a or ""]
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    sys.setrecursionlimit(10_000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert cycles == []


def test_no_module_names_another_layer_to_import_at_run_time() -> None:
    """``import_module("infrastructure.demo")`` or a handler string would hide an upward arrow."""
    known = modules()
    upward = []
    for source, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
                target = node.value.split(":")[0].replace("/", ".")
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and layer(target) != layer(source) and layer(target) not in ALLOWED[layer(source) or ""]:
                    upward.append(f"{source} names {node.value!r}")
    assert upward == []


def test_layers_are_what_the_readme_says() -> None:
    """A new top-level package must be placed in a layer (and in the README's layout) on purpose."""
    tops = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file() and p.name not in {"tests", "bench"}}
    assert tops == set(PACKAGES)
    readme = (REPO / "README.md").read_text()
    assert all(f"{package}/" in readme for package in PACKAGES)
