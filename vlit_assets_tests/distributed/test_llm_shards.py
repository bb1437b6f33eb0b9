"""Self-instruct with its requests sent from Ray tasks: same rows, global budget, cache first."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from vlit_assets.core.generated.llm.cache import RequestCache
from vlit_assets.core.generated.llm.settings import BUDGET_EXHAUSTED, Budget, LLMSettings
from vlit_assets.core.generated.self_instruct import SelfInstructRun, generate_self_instruct
from vlit_assets.core.shards import InlineMap, runs_metadata
from vlit_assets.distributed.ray_map import connect
from vlit_assets.testing.openai_server import FakeOpenAIServer
from vlit_assets_tests.core.generated.test_self_instruct import coco_frames

IMAGES = 6
TYPES = ["global", "negative", "region"]
# Columns that say how a request went (time, attempts, from the cache), not what it produced.
WIRE = ("latency_ms", "wait_ms", "attempts", "cache_hit")


def run(frames, coco_mini: Path, work: Path, server, db: Path, budget: Budget | None, mapper):
    settings = LLMSettings(base_url=server.base_url, model="fake", api_key="k", concurrency=4)
    return generate_self_instruct(
        frames["images"], frames["captions"], frames["objects"], frames["tags"],
        source="coco-mini", image_root=coco_mini / "train2017", regions_dir=work / "regions",
        settings=settings, cache=RequestCache(duckdb.connect(str(db))), budget=budget,
        types=TYPES, per_image=1, seed=0, region_min_area_frac=0.02, run_id="r",
        max_images=IMAGES, mapper=mapper,
    )  # fmt: skip


def same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    wire = [c for c in WIRE if c in a.columns]
    assert_frame_equal(a.drop(wire), b.drop(wire), check_exact=True)


def same_rows(a: SelfInstructRun, b: SelfInstructRun) -> None:
    same(a.rows, b.rows)
    same(a.request_rows, b.request_rows)


def test_inline_shards_send_what_a_local_run_sends(coco_mini, tmp_path) -> None:
    frames = coco_frames(coco_mini)
    with FakeOpenAIServer(max_lifetime_s=120) as server:
        local = run(frames, coco_mini, tmp_path, server, tmp_path / "a.duckdb", Budget(10), None)
        local_posts = len(server.log)
        server.clear_log()
        mapper = InlineMap(parallel=3)
        db = tmp_path / "b.duckdb"
        sharded = run(frames, coco_mini, tmp_path, server, db, Budget(10), mapper)
        assert len(server.log) == local_posts == 10
    same_rows(local, sharded)
    held = sharded.rows.filter(pl.col("drop_detail") == BUDGET_EXHAUSTED)
    assert held.height == local.requests - 10 > 0
    assert sharded.no_reply.get(BUDGET_EXHAUSTED, 0) == local.requests - 10 > 0
    assert runs_metadata(mapper.runs)["compute/generated/llm/shards"] >= 2


@pytest.mark.slow
def test_ray_self_instruct_equals_local_keeps_the_budget_and_reads_the_cache(
    coco_mini, ray_cluster, tmp_path
) -> None:
    frames = coco_frames(coco_mini)
    # the server listens on 127.0.0.1 in this process; the cluster's workers share the host
    with FakeOpenAIServer(max_lifetime_s=300) as server:
        local = run(frames, coco_mini, tmp_path, server, tmp_path / "local.duckdb", None, None)
        planned = local.requests
        budget = planned - 4
        server.clear_log()
        local_capped = run(
            frames, coco_mini, tmp_path, server, tmp_path / "capped.duckdb", Budget(budget), None
        )
        server.clear_log()
        db = tmp_path / "ray.duckdb"
        with connect(ray_cluster.address) as mapper:
            capped = run(frames, coco_mini, tmp_path, server, db, Budget(budget), mapper)
            posts_capped = len(server.log)
            server.clear_log()
            full = run(frames, coco_mini, tmp_path, server, db, None, mapper)
            posts_rest = len(server.log)
            server.clear_log()
            again = run(frames, coco_mini, tmp_path, server, db, None, mapper)
            posts_again = len(server.log)
    assert planned > budget > 0
    same_rows(capped, local_capped)
    assert posts_capped <= budget and posts_capped == budget
    assert capped.no_reply.get(BUDGET_EXHAUSTED) == planned - budget
    # the second run sends only what the budget held back, the third nothing at all
    assert posts_rest == planned - budget
    assert posts_again == 0 and again.cache_hits == planned
    same_rows(full, local)
    same(again.rows, local.rows)
    assert again.rows["cache_hit"].all()
    meta = runs_metadata(mapper.runs)
    assert meta["compute/generated/llm/shards"] >= 2
    assert meta["compute/nodes"] == 2
