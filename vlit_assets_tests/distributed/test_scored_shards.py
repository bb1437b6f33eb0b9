"""Scoring on a ShardMap equals local scoring row for row: inline shards, then a Ray cluster."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from vlit_assets.core.scored import shards
from vlit_assets.core.scored.embed import EmbeddingCache, MiniLMEmbedder
from vlit_assets.core.scored.quality import QualityConfig, QualityResult, score_conversations
from vlit_assets.core.shards import InlineMap, runs_metadata
from vlit_assets.distributed.ray_map import connect
from vlit_assets.testing.defects import plant_defects
from vlit_assets.testing.planted import SOURCE, usable_templates


class HashEmbedder:
    """Unit vectors from a text's hash: deterministic, picklable, no model."""

    dim = 16
    model_name = "hash-16"
    batch_size = 8

    def encode(self, texts: list[str]) -> np.ndarray:
        seeds = [int(hashlib.sha1(t.encode()).hexdigest()[:8], 16) for t in texts]
        rows = np.stack([np.random.default_rng(s).normal(size=self.dim) for s in seeds])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def coco_rows(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory):
    """coco-mini's template rows, planted defects (duplicates across images among them) and a
    few text-only rows, with the annotations that judge them."""
    work = tmp_path_factory.mktemp("coco")
    raw, good = usable_templates(SOURCE, coco_mini, work / "regions")
    bad, _ = plant_defects(good, raw.objects, raw.tags, seed=7, per_kind=10)
    rows = pl.concat([good, bad])
    text_only = rows.head(6).with_columns(
        conversation_id=pl.concat_str(pl.lit("textonly-"), pl.col("conversation_id")),
        image_id=pl.lit(None, pl.String),
        image_path=pl.lit(None, pl.String),
    )
    return raw, pl.concat([rows, text_only]).sample(fraction=1.0, shuffle=True, seed=3)


def score(raw, rows: pl.DataFrame, embedder, db: Path, mapper=None) -> QualityResult:
    with duckdb.connect(str(db)) as con:
        return score_conversations(
            rows,
            objects=raw.objects,
            tags=raw.tags,
            categories=raw.categories,
            captions=raw.captions,
            embedder=embedder,
            cache=EmbeddingCache(con),
            config=QualityConfig(semantic="on"),
            run_id="r",
            images=raw.images,
            mapper=mapper,
        )


def test_image_groups_keep_each_image_whole_and_every_row_once() -> None:
    rows = pl.DataFrame(
        {"conversation_id": [f"c{i}" for i in range(9)],
         "image_id": ["a", "b", "a", None, "c", "b", None, "d", "c"]}
    )  # fmt: skip
    groups = shards.image_groups(rows, 3)
    assert sorted(pl.concat(groups)["conversation_id"]) == sorted(rows["conversation_id"])
    owners: dict[object, set[int]] = {}
    for k, g in enumerate(groups):
        for image in g["image_id"].to_list():
            owners.setdefault(image, set()).add(k)
    assert all(len(v) == 1 for v in owners.values()), owners
    assert len(groups) == 3


def test_inline_shards_score_like_one_local_call(coco_rows, tmp_path, monkeypatch) -> None:
    raw, rows = coco_rows
    monkeypatch.setattr(shards, "MIN_ROWS_PER_SHARD", 40)
    monkeypatch.setattr(shards, "MIN_BATCHES_PER_SHARD", 1)
    local = score(raw, rows, HashEmbedder(), tmp_path / "a.duckdb")
    mapper = InlineMap(parallel=3)
    sharded = score(raw, rows, HashEmbedder(), tmp_path / "b.duckdb", mapper)
    assert_frame_equal(sharded.scored, local.scored, check_exact=True)
    assert sharded.dataset == local.dataset
    assert sharded.encoded_texts == local.encoded_texts > 0
    meta = runs_metadata(mapper.runs)
    assert meta["compute/scored/metrics/shards"] == 6
    assert meta["compute/scored/embed/shards"] > 1
    # the source has copies across images and text-only rows: what the driver must still see
    assert local.scored["exact_duplicate_of"].drop_nulls().len() > 0
    assert local.scored.filter(pl.col("image_id").is_null()).height == 6


def test_duplicate_ids_across_shards_are_refused(coco_rows, tmp_path, monkeypatch) -> None:
    raw, rows = coco_rows
    monkeypatch.setattr(shards, "MIN_ROWS_PER_SHARD", 40)
    first = rows.filter(pl.col("image_id").is_not_null()).head(1)
    other = rows.filter(pl.col("image_id") != first["image_id"][0]).head(1)
    twin = other.with_columns(conversation_id=first["conversation_id"])
    with pytest.raises(ValueError, match="is not unique"):
        score(raw, pl.concat([rows, twin]), HashEmbedder(), tmp_path / "c.duckdb", InlineMap(3))


@pytest.mark.slow
def test_ray_scoring_of_coco_mini_equals_local_row_for_row(
    coco_rows, ray_cluster, tmp_path, monkeypatch
) -> None:
    """MiniLM on the cluster's workers gives the very vectors of a local run (same batches)."""
    raw, rows = coco_rows
    monkeypatch.setattr(shards, "MIN_ROWS_PER_SHARD", 100)
    monkeypatch.setattr(shards, "MIN_BATCHES_PER_SHARD", 2)
    local = score(raw, rows, MiniLMEmbedder(), tmp_path / "local.duckdb")
    with connect(ray_cluster.address) as mapper:
        distributed = score(raw, rows, MiniLMEmbedder(), tmp_path / "ray.duckdb", mapper)
    assert_frame_equal(distributed.scored, local.scored, check_exact=True)
    assert distributed.dataset == local.dataset
    assert distributed.encoded_texts == local.encoded_texts > 0
    with duckdb.connect(str(tmp_path / "local.duckdb")) as a:
        want = a.execute("SELECT text_hash, vector FROM embed__cache ORDER BY 1").fetchall()
    with duckdb.connect(str(tmp_path / "ray.duckdb")) as b:
        got = b.execute("SELECT text_hash, vector FROM embed__cache ORDER BY 1").fetchall()
    assert got == want  # bit-identical float32 vectors, not merely close
    meta = runs_metadata(mapper.runs)
    assert meta["compute/nodes"] == 2
    assert meta["compute/scored/metrics/shards"] > 1 and meta["compute/scored/embed/shards"] > 1


@pytest.mark.slow
def test_scored_asset_on_the_cluster_reports_its_shards_and_keeps_the_rows(
    ray_cluster, tmp_path, monkeypatch
) -> None:
    """Through Dagster: $VLIT_RAY_ADDRESS sends scoring to the cluster, same rows as local."""
    from vlit_assets.core import warehouse
    from vlit_assets.runner import run_source
    from vlit_assets.testing.pipeline import REPO, materialization_metadata, pipeline_env

    query = "SELECT * EXCLUDE (scored_run_id) FROM scored__conversations ORDER BY conversation_id"
    with pipeline_env(tmp_path, monkeypatch) as env:
        monkeypatch.delenv("VLIT_RAY_ADDRESS", raising=False)
        stages = ("raw", "generated", "scored")
        local = run_source(env.instance, "sample", REPO / "data" / "sample", stages=stages)
        assert local.success
        assert materialization_metadata(local, "scored__conversations")["compute"] == "local"
        with warehouse.connect(env.db_path) as con:
            want = con.execute(query).pl()
            con.execute("DELETE FROM embed__cache")  # so the cluster encodes every text again
        monkeypatch.setenv("VLIT_RAY_ADDRESS", ray_cluster.address)
        distributed = run_source(env.instance, "sample", None, stages=("scored",))
        assert distributed.success
        meta = materialization_metadata(distributed, "scored__conversations")
        with warehouse.connect(env.db_path, read_only=True) as con:
            got = con.execute(query).pl()
    assert meta["compute"] == "ray"
    assert meta["texts_embedded"] > 0
    assert meta["compute/scored/metrics/shards"] >= 1 and meta["compute/scored/embed/shards"] >= 1
    assert_frame_equal(got, want, check_exact=True)
