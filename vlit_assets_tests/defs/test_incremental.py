"""Incremental rebuilds: a dropped batch reprocesses only itself (helpers: testing.incremental)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from vlit_assets.core.schemas import FINAL_CONVERSATIONS, FINAL_DECISIONS, SCORED_CONVERSATIONS
from vlit_assets.defs.automation import AutomationSettings
from vlit_assets.resources import ProjectPaths
from vlit_assets.runner import run_final
from vlit_assets.testing.incremental import (
    PER_SOURCE_TABLES,
    RUN_ID_COLUMN,
    SMALL_BATCH_CHECKS,
    Snapshot,
    evaluate_sensor,
    execute_request,
    make_batch,
    partitions_with_new_events,
    read_table,
    source_text_hashes,
    sources_with_new_run_ids,
    texts_embedded,
)
from vlit_assets.testing.pipeline import materialization_metadata, pipeline_env


def _per_source_contents(db_path: Path, sources: set[str]) -> dict[str, pl.DataFrame]:
    out = {}
    for table in PER_SOURCE_TABLES:
        frame = read_table(db_path, table).filter(pl.col("source").is_in(sorted(sources)))
        out[table.name] = frame.sort(list(table.key))
    return out


@pytest.mark.slow
def test_a_dropped_batch_rebuilds_only_its_own_partition(tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        data = tmp_path / "data"
        monkeypatch.setenv("VLIT_DATA_DIR", str(data))
        paths = ProjectPaths(data_dir=str(data), output_dir=str(env.output_dir))
        settings = AutomationSettings()
        old = {f"batch-{k:03d}" for k in range(3)}
        for name in sorted(old):
            make_batch(data / "incoming" / name, int(name[-3:]), images=2)
        requests = evaluate_sensor(env.instance, paths, settings)
        assert {r.partition_key for r in requests} == old
        assert all(execute_request(env.instance, r, SMALL_BATCH_CHECKS).success for r in requests)
        assert run_final(env.instance, log_level="WARNING").success
        before = Snapshot.take(env.instance, env.db_path)
        old_contents = _per_source_contents(env.db_path, old)

        make_batch(data / "incoming" / "batch-003", 3, images=2)
        (request,) = evaluate_sensor(env.instance, paths, settings)
        assert request.partition_key == "batch-003"
        result = execute_request(env.instance, request, SMALL_BATCH_CHECKS)
        assert result.success
        final = run_final(env.instance, log_level="WARNING")
        assert final.success
        after = Snapshot.take(env.instance, env.db_path)

        # Only the new partition has new run ids and new per-partition events; the final
        # stage is the one unpartitioned rebuild (partition None).
        assert sources_with_new_run_ids(before, after) == {"batch-003"}
        assert partitions_with_new_events(before, after) == {"batch-003", None}
        for stage in RUN_ID_COLUMN:
            assert after.rows[(stage, "batch-003")] > 0
            assert all(after.rows[(stage, s)] == before.rows[(stage, s)] for s in old)
        assert _per_source_contents(env.db_path, old).keys() == old_contents.keys()
        for name, frame in _per_source_contents(env.db_path, old).items():
            assert frame.equals(old_contents[name]), f"{name}: untouched batches' rows changed"

        # The embedder ran on the new batch's texts only, and the final stage on none.
        new_hashes = after.embedded - before.embedded
        assert len(new_hashes) == texts_embedded(result) > 0
        assert new_hashes <= source_text_hashes(env.db_path, "batch-003")
        assert before.embedded <= after.embedded
        assert materialization_metadata(final, FINAL_DECISIONS.name)["texts_embedded"] == 0

        # The final stage decided every new conversation and ships some of them.
        scored_new = set(
            read_table(env.db_path, SCORED_CONVERSATIONS)
            .filter(pl.col("source") == "batch-003")["conversation_id"]
            .to_list()
        )
        decided = set(read_table(env.db_path, FINAL_DECISIONS)["conversation_id"].to_list())
        assert scored_new and scored_new <= decided
        shipped = read_table(env.db_path, FINAL_CONVERSATIONS)
        assert shipped.filter(pl.col("source") == "batch-003").height > 0
        assert set(shipped["source"].unique().to_list()) == old | {"batch-003"}
