"""The import layers (docs/architecture.md): each layer pulls in only the layers below it.

    entry points (runner, launch, config, evaluation, report, targets, browser)
    lit     LightningModules                  -> sae, metrics, fileio
    data    activation sources and the cache  -> lm, fileio, console
    lm      language models, sites, text      -> fileio
    sae     the SAE families                  -> io's formats only when loading, never at import
    io      SAE file formats                  -> fileio
    metrics, fileio, console                  -> nothing of saelab

Read from the source, without importing anything: every statement that runs when a module is
imported (module and class bodies, ``try`` and ``if`` blocks, but not function bodies or
``if TYPE_CHECKING:``) is followed through saelab, from every module of a layer. An import
inside a function is lazy, so it is where a layer may reach further (io's formats, when an SAE
is loaded). One interpreter checks what no reading of the source can: that the SAE layer loads
without Lightning or Hydra.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saelab"

ALLOWED = {
    "saelab.fileio": set(),
    "saelab.io": {"io", "fileio"},
    "saelab.metrics": set(),
    "saelab.console": set(),
    "saelab.sae": {"sae"},
    "saelab.lm": {"lm", "fileio"},
    "saelab.data": {"data", "lm", "fileio", "console"},
    "saelab.lit": {"lit", "sae", "metrics", "fileio"},
}


def module_files() -> dict[str, Path]:
    """Every module of saelab by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_statements(body: list[ast.stmt]):
    """The import statements among ``body`` that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue  # runs when called, not when imported
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from import_time_statements(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from import_time_statements(inner)
            for handler in getattr(node, "handlers", []):
                yield from import_time_statements(handler.body)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def direct_imports(module: str) -> set[str]:
    """The saelab modules importing ``module`` loads directly (parents included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in import_time_statements(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            found.update(n for n in _with_parents(name) if n in MODULES)
    return found


def loaded_by(module: str) -> set[str]:
    """Every saelab module that ``import module`` loads."""
    todo, seen = list(_with_parents(module)), set()
    while todo:
        name = todo.pop()
        if name not in seen and name in MODULES:
            seen.add(name)
            todo.extend(direct_imports(name))
    return seen


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    own = layer.split(".")[1]
    members = [m for m in MODULES if m == layer or m.startswith(layer + ".")]
    assert members
    for member in members:
        layers = {layer_of(m) for m in loaded_by(member)} - {None}
        assert layers <= ALLOWED[layer] | {own}, (
            f"import {member} pulls in {sorted(layers - ALLOWED[layer] - {own})}"
        )


def test_the_reading_sees_imports_the_layers_must_not_have(tmp_path, monkeypatch):
    """The check can fail: an import at module level, in a class body or in a ``try`` block is
    seen; one in a function or under TYPE_CHECKING is not."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import saelab.fileio\n"
        "try:\n    from saelab.lit import base\nexcept ImportError:\n    pass\n"
        "class A:\n    from ..data import cache\n"
        "if TYPE_CHECKING:\n    import saelab.runner\n"
        "def f():\n    import saelab.report\n"
    )
    monkeypatch.setitem(MODULES, "saelab.metrics.probe", source)
    direct = direct_imports("saelab.metrics.probe")
    assert {"saelab.fileio", "saelab.lit", "saelab.lit.base", "saelab.data.cache"} <= direct
    assert not direct & {"saelab.runner", "saelab.report"}
    assert {"lit", "data"} <= {layer_of(m) for m in loaded_by("saelab.metrics.probe")}


@pytest.mark.slow  # an interpreter loading torch
def test_the_sae_layer_needs_neither_lightning_nor_hydra():
    """An exported SAE runs anywhere: saelab.sae (and the formats) import without them."""
    code = (
        "import sys, saelab.sae, saelab.io; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'omegaconf')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
