"""Quality control alone on a flawed LLaVA-format set, end to end through Dagster.

The data comes from ../shared/bench/make_llava_bench.py, which plants exact copies, one-word near
copies, terse and degenerate answers and names each planted row in a sidecar. The run must
filter and export that set, not block it, and say what was wrong with the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from vlit_assets.runner import run_final, run_source
from vlit_assets.testing.pipeline import check_evaluation, materialization_metadata, pipeline_env

N = 2000


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory, make_bench) -> Path:
    return make_bench(tmp_path_factory.mktemp("bench") / "flawed", N)


def _kinds(folder: Path) -> pl.DataFrame:
    return pl.read_csv(
        folder / "bench.kinds.tsv",
        separator="\t",
        has_header=False,
        new_columns=["id", "kind", "source_id"],
        schema_overrides={"source_id": pl.String},
    )


@pytest.mark.slow
def test_a_flawed_llava_set_is_filtered_and_exported_not_blocked(
    bench_folder, tmp_path, monkeypatch
):
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "flawed", bench_folder)
        assert result.success
        principles = check_evaluation(result, "scored_suite")
        # the input is flawed: the suite says so, as a warning, and names the figures
        assert not principles.passed and principles.severity.value == "WARN"
        assert "exact_duplicate_share" in (principles.description or "")
        final = run_final(env.instance)
        assert final.success, "the final stage and its suite must pass on the filtered set"
        export = materialization_metadata(final, "final__export")
        assert export["status"].startswith("written")

        decided = pl.DataFrame(
            env.query(
                "SELECT s.variant, d.kept, d.first_failing_rule FROM final__decisions d "
                "JOIN scored__conversations s USING (conversation_id)"
            ),
            schema=["variant", "kept", "rule"],
            orient="row",
        )
        kinds = (
            _kinds(bench_folder)
            .with_row_index("variant")
            .with_columns(pl.col("variant").cast(pl.Int64))
        )
        joined = kinds.join(decided.with_columns(pl.col("variant").cast(pl.Int64)), on="variant")
        assert joined.height == N  # every planted row was imported and decided

        def recall(kind: str) -> float:
            rows = joined.filter(pl.col("kind") == kind)
            return rows.filter(~pl.col("kept")).height / rows.height

        assert recall("exact_dup") == 1.0
        assert recall("near_dup") >= 0.9
        assert recall("repeat") >= 0.95
        clean = joined.filter(pl.col("kind") == "clean")
        false_drops = clean.filter(~pl.col("kept"))
        assert false_drops.height <= 0.01 * clean.height, false_drops.head(10)

        # the export holds exactly the kept rows
        kept = env.scalar("SELECT count(*) FROM final__conversations")
        folder = Path(export["path"])
        records = sum(
            len(json.loads((folder / f"llava_{split}.json").read_text(encoding="utf-8")))
            for split in ("train", "val")
        )
        assert records == kept == joined.filter(pl.col("kept")).height
