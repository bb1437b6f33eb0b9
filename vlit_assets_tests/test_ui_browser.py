"""The Dagster UI in headless Chromium: launch the `sample` run by clicking, see it succeed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ui_check.py"
BROWSER_BINARIES = (Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))
SCREENSHOTS = (
    "01_raw_group",
    "02_launch_dialog",
    "03_run_page",
    "04_metadata_plots",
    "05_asset_graph",
)


def _load_ui_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ui_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _require_browser() -> None:
    """Skip without Chromium locally; in CI (which installs it) its absence is a failure."""
    missing = [str(p) for p in BROWSER_BINARIES if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if not missing:
        return
    message = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: CI must install them")
    pytest.skip(message)


def _assert_real_picture(path: Path) -> None:
    """A PNG of the page, not a blank or single-colour frame."""
    with Image.open(path) as image:
        assert image.format == "PNG", path
        assert image.width >= 800 and image.height >= 600, (path, image.size)
        small = image.convert("RGB").resize((200, 150))
    colours = small.getcolors(maxcolors=200 * 150) or []
    assert len(colours) > 50, f"{path.name}: only {len(colours)} colours, looks blank"
    dominant = max(count for count, _ in colours)
    assert dominant < 0.95 * 200 * 150, f"{path.name}: one colour covers the frame"


@pytest.mark.browser
@pytest.mark.slow
def test_ui_launches_sample_run_and_shows_it(tmp_path: Path) -> None:
    _require_browser()
    ui_check = _load_ui_check()

    result = ui_check.run_ui_check(tmp_path / "shots", work_dir=tmp_path / "work")

    failed = [s for s in result["steps"] if not s["ok"]]
    assert not failed, f"failed steps: {failed}; log: {result.get('server_log')}"
    assert result["run_status"] == "Success"
    assert result["run_status_graphql"] == "SUCCESS"
    # All seven raw tables now have their one partition, as the graph cards say.
    assert result["graph_cards_filled"] >= 7
    for name in SCREENSHOTS:
        path = Path(result["screenshots"][name])
        assert path.parent == tmp_path / "shots"
        _assert_real_picture(path)
    # The server and everything it started are gone, and its port is free again.
    assert result["group_alive"] == []
    assert result["port_free"] is True
    assert ui_check.port_is_free(result["port"])
