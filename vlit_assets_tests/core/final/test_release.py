"""core/final/release: the export version and the code version recorded in the manifest."""

import subprocess
from pathlib import Path

import polars as pl

from vlit_assets.core.final.release import code_version, export_version


def test_export_version_follows_content_not_the_checkout_location():
    def kept(root: str, text: str = "h1", split: str = "train") -> pl.DataFrame:
        return pl.DataFrame(
            {
                "conversation_id": ["c1", "c2"],
                "split": [split, "val"],
                "norm_text_hash": [text, "h2"],
                "image_id": ["i1", "i2"],
                "image_path": [f"{root}/train/a.jpg", f"{root}/regions/s/b_0.jpg"],
            }
        )

    base = export_version(kept("/home/ana/vlit/data"), {"val_ratio": 0.05})
    assert export_version(kept("/srv/clone/data"), {"val_ratio": 0.05}) == base
    assert export_version(kept("/srv/clone/data", text="h9"), {"val_ratio": 0.05}) != base
    assert export_version(kept("/srv/clone/data", split="val"), {"val_ratio": 0.05}) != base
    assert export_version(kept("/srv/clone/data"), {"val_ratio": 0.1}) != base


def test_code_version_names_the_commit_of_the_given_root(tmp_path: Path):
    root = Path(__file__).resolve().parents[3]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert code_version(root).endswith(f"({head})")
    assert code_version(tmp_path).endswith("(unknown)")  # not a checkout
