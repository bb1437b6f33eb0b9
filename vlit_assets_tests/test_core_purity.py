"""The core must stay usable without Dagster (notebooks, other orchestrators)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import vlit_assets.core as core


def test_core_modules_do_not_import_dagster():
    modules = [f"vlit_assets.core.{m.name}" for m in pkgutil.iter_modules(core.__path__)]
    assert len(modules) >= 4
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
