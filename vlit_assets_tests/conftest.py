"""Shared fixtures: the real COCO subset beside the checkout, and temp homes for each test."""

from __future__ import annotations

import os
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
