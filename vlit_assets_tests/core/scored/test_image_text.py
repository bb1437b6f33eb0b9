"""The optional CLIP scorer: off by default, and a clear error when its directory is unusable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlit_assets.core.scored.image_text import (
    ClipScorer,
    ImageTextConfig,
    ImageTextModelMissing,
    build_image_text_scorer,
    describe_image_text_scorer,
    missing_model_files,
)


@pytest.mark.parametrize("config", [None, {}, {"clip_model_path": ""}, ImageTextConfig()])
def test_not_configured_by_default(config):
    assert describe_image_text_scorer(config)["status"] == "not configured"
    assert build_image_text_scorer(config) is None


def test_absent_directory_is_an_error_naming_the_path(tmp_path):
    where = tmp_path / "no-such-clip"
    with pytest.raises(ImageTextModelMissing, match=f"{where}.*missing the directory itself"):
        ClipScorer(where)
    with pytest.raises(ImageTextModelMissing, match=str(where)):
        build_image_text_scorer({"clip_model_path": str(where)})


def test_incomplete_directory_lists_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert missing_model_files(tmp_path) == [
        "preprocessor_config.json",
        "model.safetensors or pytorch_model.bin",
    ]
    with pytest.raises(ImageTextModelMissing) as err:
        ClipScorer(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "model.safetensors or pytorch_model.bin" in message


def test_describe_reports_configured_path_and_its_gaps(tmp_path):
    info = describe_image_text_scorer(ImageTextConfig(clip_model_path=str(tmp_path)))
    assert info["status"] == f"configured: {tmp_path.resolve()}"
    assert "config.json" in info["missing_files"]


def test_complete_looking_directory_that_cannot_load_fails_on_first_score(tmp_path):
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    scorer = ClipScorer(tmp_path)  # files are present, so construction succeeds
    with pytest.raises(ImageTextModelMissing, match=f"{tmp_path}.*failed to load"):
        scorer.score([tmp_path / "img.jpg"], ["a photo"])


def test_default_pipeline_modules_do_not_load_an_image_model():
    code = (
        "import sys\n"
        "import vlit_assets.core.scored.embed, vlit_assets.core.scored.neardup\n"
        "import vlit_assets.core.scored.image_text\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
