"""The generated stage's core function: template rows, drop codes counted per generator."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from PIL import Image

from vlit_assets.core.generated.stage import (
    RAW_INPUTS,
    GenerationOptions,
    generate_source,
    row_metadata,
)
from vlit_assets.core.schemas import GENERATED_CONVERSATIONS
from vlit_assets.core.vocab import DROP_REASONS
from vlit_assets_tests.core.generated.test_generate import SRC, _frames


def _raw(objects: list[tuple]) -> dict[str, pl.DataFrame]:
    return {t.name: f for t, f in zip(RAW_INPUTS, _frames(objects), strict=True)}


def test_without_an_llm_the_stage_is_the_template_rows_with_their_drops(tmp_path: Path) -> None:
    # No photo under image_root yet: both region rows fail to render and say why.
    raw = _raw([("cat", 300, 300, 300, 300, False), ("bench", 600, 50, 350, 200, False)])
    options = GenerationOptions(workers=1)
    out = generate_source(
        raw, source=SRC, image_root=tmp_path, regions_dir=tmp_path / "regions", options=options,
        llm=None, run_id="r1",
    )  # fmt: skip
    rows = out.conversations
    assert rows.schema == pl.Schema(GENERATED_CONVERSATIONS.polars_schema)
    assert out.generators == "template only (no LLM endpoint configured)"
    assert out.requests.is_empty() and out.verification.is_empty() and out.warning is None
    assert out.metadata["template_processes"] == 1
    failed = rows.filter(pl.col("instruction_type") == "region")
    assert failed["drop_reason"].to_list() == ["region_render_failed"] * 2
    assert all("a.jpg" in d for d in failed["drop_detail"])
    assert set(rows["drop_reason"].drop_nulls()) <= DROP_REASONS.keys()

    Image.new("RGB", (1000, 800), (0, 90, 0)).save(tmp_path / "a.jpg", "JPEG")
    off = generate_source(
        raw, source=SRC, image_root=tmp_path, regions_dir=tmp_path / "regions",
        options=GenerationOptions(use_llm=False, workers=1), llm=None, run_id="r1",
    )  # fmt: skip
    assert off.generators == "template only (use_llm is off)"
    assert off.conversations["drop_reason"].null_count() == off.conversations.height


def test_row_metadata_counts_usable_rows_and_drops_per_generator_and_code() -> None:
    rows = pl.DataFrame(
        {
            "generator": ["template", "template", "template", "llm", "llm", "llm"],
            "instruction_type": ["global", "global", "negative", "global", "global", "region"],
            "drop_reason": [None, None, "too_few_facts", None, "llm_error", "llm_error"],
            "drop_detail": [None, None, "1 of 3", None, "timeout", "http_503"],
        }
    )
    assert row_metadata(rows) == {
        "usable_rows": 3,
        "rows/llm/global": 1,
        "rows/template/global": 2,
        "drops/llm/llm_error": 2,
        "drops/template/too_few_facts": 1,
    }
