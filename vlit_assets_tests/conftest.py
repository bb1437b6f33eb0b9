"""Shared fixtures: the real COCO subset beside the checkout, and temp homes for each test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "data" / "sample"


def _shared_dir(env: str, name: str) -> Path:
    return Path(os.environ.get(env, REPO.parent / "shared" / name)).resolve()


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: CI must have ../shared beside the checkout")
    pytest.skip(message)


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """The 80-image COCO train2017 subset in ../shared/coco-mini (read-only)."""
    return _require(_shared_dir("VLIT_COCO_MINI", "coco-mini"), "coco-mini")


@pytest.fixture(scope="session")
def paper_examples() -> Path:
    """The paper's three released conversations in ../shared/paper-examples (read-only)."""
    return _require(_shared_dir("VLIT_PAPER_EXAMPLES", "paper-examples"), "paper-examples")


@pytest.fixture(scope="session")
def make_bench() -> Callable[[Path, int, int | None], Path]:
    """Writes a flawed LLaVA bench folder (../shared/bench/make_llava_bench.py, with sidecars
    naming each planted defect) of ``n`` conversations, over ``images`` drawn images if given."""
    generator = _require(_shared_dir("VLIT_BENCH", "bench"), "bench") / "make_llava_bench.py"

    def make(folder: Path, n: int, images: int | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(generator), "--n", str(n), "--out", str(folder / "bench.jsonl")]
        if images is not None:
            cmd += ["--images", str(images)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return folder

    return make
