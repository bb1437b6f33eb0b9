"""The core must stay usable without Dagster, and its imports point only down the stage order."""

from __future__ import annotations

import ast
import pathlib
import pkgutil
import subprocess
import sys

import vlit_assets.core as core

CORE = pathlib.Path(core.__file__).parent
# A stage may use the shared modules and the stages before it, never one after it.
STAGE_ORDER = ["raw", "generated", "scored", "final"]


def _core_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(core.__path__, prefix="vlit_assets.core.")]


def test_core_modules_do_not_import_dagster():
    modules = _core_modules()
    assert {"vlit_assets.core.raw.collect", "vlit_assets.core.final.select"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _imports(path: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["vlit_assets", "core"] or len(parts) < 3:
        return None
    return STAGE_ORDER.index(parts[2]) if parts[2] in STAGE_ORDER else None


def test_core_has_no_upward_arrow():
    upward = []
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE.parent.parent).with_suffix("")
        here = ".".join(rel.parts)
        for target in _imports(path):
            if not target.startswith("vlit_assets"):
                continue
            if not target.startswith("vlit_assets.core"):
                upward.append(f"{here} -> {target} (core imports the Dagster layer)")
                continue
            mine, theirs = _stage(here), _stage(target)
            if theirs is not None and (mine is None or theirs > mine):
                upward.append(f"{here} -> {target}")
    assert upward == []
