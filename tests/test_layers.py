"""The house's layers: each package imports only the packages below it (its own too), so the pipeline
reads bottom to top and nothing reaches back into a later stage. Every import counts, including the
ones inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# bottom to top; a module belongs to the longest name here that prefixes it
LAYERS = [
    ["graphc.about", "graphc.errors", "graphc.resources"],
    ["graphc.ir"],                      # types, graphs, the table of ops, printing and reading IR
    ["graphc.ops"],                     # each op's shape rule, vjp, reference and lowering
    ["graphc.passes"],                  # rewrites, fusion, memory planning
    ["graphc.autodiff"],                # the backward pass and optimizer updates, as IR
    ["graphc.frontend"],                # .net source -> forward graph
    ["graphc.codegen"],                 # LLVM code for a schedule
    ["graphc.export"],                  # ONNX, Graphviz
    ["graphc.runtime.execute"],         # running compiled steps
    ["graphc.driver"],                  # the one chain of stages
    ["graphc.artifacts"],               # what `graphc compile` writes
    ["graphc.runtime.train"],           # the training application
    ["graphc.cli", "graphc"],           # the command line; the package's own API
]


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["graphc", *parts[1:]] if parts[0] == "graphc" else ["graphc", *parts])


def _layer(module: str) -> int:
    matches = [(len(name), i) for i, layer in enumerate(LAYERS) for name in layer
               if module == name or module.startswith(name + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def _imports(path: Path) -> list[tuple[str, int]]:
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            # `from graphc import driver` imports graphc.driver
            out += [(f"{n.module}.{a.name}" if n.module == "graphc" else n.module, n.lineno) for a in n.names]
    return [(m, line) for m, line in out if m == "graphc" or m.startswith("graphc.")]


def test_packages_import_only_downward():
    sources = sorted(p for d in ("graphc", "runtime") for p in (ROOT / d).rglob("*.py"))
    assert sources
    upward = []
    for path in sources:
        here = _module(path)
        for target, line in _imports(path):
            if _layer(target) > _layer(here):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}")
    assert not upward, "\n".join(upward)


def test_each_package_imports_on_its_own(tmp_path):
    """No cycle hides behind import order: each package imports in a fresh interpreter, the compiler
    stages from the source tree itself (runtime/ becomes graphc.runtime only when installed)."""
    import subprocess
    import sys
    stages = ("graphc.ir", "graphc.ops", "graphc.passes", "graphc.autodiff", "graphc.frontend", "graphc.codegen",
              "graphc.export")
    installed = ("graphc.runtime.execute.step", "graphc.driver", "graphc.runtime.train.trainer", "graphc.cli",
                 "graphc.api")
    for package, cwd in [(p, ROOT) for p in stages] + [(p, tmp_path) for p in installed]:
        p = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True, text=True, cwd=cwd)
        assert p.returncode == 0, f"import {package} (from {cwd}):\n{p.stderr}"
