"""Incremental-rebuild helpers shared by vlit_assets_tests/defs/test_incremental.py and benchmarks.

They make COCO-layout batches from data/sample, evaluate the incoming-batch sensor
and run what it requests, and take the snapshots (run ids per source, materializations per
partition, embedding-cache keys) that show which partitions a rebuild touched.
benchmarks/incremental.py runs the same steps on 100 batches and times them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.ids import text_hash
from vlit_assets.core.schemas import (
    GENERATED_CONVERSATIONS,
    RAW_CAPTIONS,
    SCORED_CONVERSATIONS,
    TABLES,
    Table,
)
from vlit_assets.core.scored.embed import EMBED_CACHE
from vlit_assets.defs.automation import AutomationSettings, incoming_batches_sensor
from vlit_assets.resources import ProjectPaths, env_table_root
from vlit_assets.runner import run_source
from vlit_assets.testing.pipeline import REPO, materialization_metadata

SAMPLE = REPO / "data" / "sample"
# The column that says which run wrote a row, per stage: scored rows keep the generated run id
# they were made from, so their own run is `scored_run_id`.
RUN_ID_COLUMN = {"raw": "run_id", "generated": "run_id", "scored": "scored_run_id"}
PER_SOURCE_TABLES = tuple(t for t in TABLES.values() if t.partitioned and t.stage in RUN_ID_COLUMN)
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "du", "fe", "go")
_ID_STRIDE = 1_000  # ids per batch: far more than the sample's 24 images, 145 objects
# Balance of two or three images is noise (one more "yes" moves the yes-ratio by 0.1), so the
# per-batch suite leaves balance to the final suite, which measures it over every source.
# Applied on top of the sensor's run config, to the base and the new batches alike.
SMALL_BATCH_CHECKS: dict[str, dict[str, object]] = {
    "scored__conversations_scored_suite": {
        "yes_ratio_min": 0.0,
        "yes_ratio_max": 1.0,
        "min_category_entropy_norm": None,
    }
}


def batch_word(k: int) -> str:
    """A made-up word unique to batch ``k`` (no digits: numbers in captions read as counts)."""
    n = len(_SYLLABLES)
    return "".join(_SYLLABLES[(k // n**i) % n] for i in (2, 1, 0))


def make_batch(dest: Path, k: int, images: int = 3, sample: Path = SAMPLE) -> Path:
    """Write batch ``k``: ``images`` sample images under new ids, captions unique to the batch.

    Image, caption and object ids are offset by ``k`` so batches never collide, and each
    caption gains a sentence naming the batch, so its texts are new to the embedding cache the
    way a real new batch's would be. The captions file is written last (the sensor's signal).
    """
    captions = json.loads((sample / "annotations" / "captions_train.json").read_text())
    instances = json.loads((sample / "annotations" / "instances_train.json").read_text())
    pool = sorted(captions["images"], key=lambda im: im["id"])
    chosen = [pool[(k * images + j) % len(pool)] for j in range(images)]
    base = (k + 1) * _ID_STRIDE
    new_id = {im["id"]: base + j for j, im in enumerate(chosen)}
    (dest / "annotations").mkdir(parents=True)
    (dest / "train").mkdir()
    new_images = []
    for im in chosen:
        name = f"{new_id[im['id']]:012d}.jpg"
        shutil.copyfile(sample / "train" / im["file_name"], dest / "train" / name)
        new_images.append({**im, "id": new_id[im["id"]], "file_name": name})
    word = batch_word(k)
    objects = [a for a in instances["annotations"] if a["image_id"] in new_id]
    texts = [a for a in captions["annotations"] if a["image_id"] in new_id]
    instances_out = {
        **instances,
        "images": new_images,
        "annotations": [
            {**a, "id": base + i, "image_id": new_id[a["image_id"]]} for i, a in enumerate(objects)
        ],
    }
    captions_out = {
        **captions,
        "images": new_images,
        "annotations": [
            {
                **a,
                "id": base + i,
                "image_id": new_id[a["image_id"]],
                "caption": f"{a['caption']} Filed in the {word} collection.",
            }
            for i, a in enumerate(texts)
        ],
    }
    (dest / "annotations" / "instances_train.json").write_text(json.dumps(instances_out))
    (dest / "annotations" / "captions_train.json").write_text(json.dumps(captions_out))
    # The drop finished before the sensor looks: past the sensor's settle time.
    settled = time.time() - 60
    for written in (dest / "annotations").glob("*.json"):
        os.utime(written, (settled, settled))
    return dest


def evaluate_sensor(
    instance: dg.DagsterInstance, paths: ProjectPaths, automation: AutomationSettings
) -> list[dg.RunRequest]:
    """One sensor tick: apply its partition requests and return its run requests.

    No cursor is carried between ticks; the sensor adopts known partitions as they are, so only
    new batches are requested, as in a daemon whose cursor saw the earlier ticks.
    """
    context = dg.build_sensor_context(
        instance=instance, resources={"paths": paths, "automation": automation}
    )
    result = incoming_batches_sensor(context)
    if not isinstance(result, dg.SensorResult):
        raise TypeError(f"incoming_batches_sensor returned {type(result).__name__}")
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return list(result.run_requests or [])


def execute_request(
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    overlay: dict[str, dict[str, object]] | None = None,
    log_level: str = "WARNING",
) -> dg.ExecuteInProcessResult:
    """Run what the sensor asked for, as the daemon would: its partition, config and tags.

    ``overlay`` adds op config the request does not set (it may not override the request's).
    """
    config = dict(request.run_config or {})
    extra = set(config) - {"ops"}
    if extra:
        raise ValueError(f"run request {request.run_key}: unexpected run_config keys {extra}")
    op_config = {name: op.get("config", {}) for name, op in config.get("ops", {}).items()}
    for name, values in (overlay or {}).items():
        clash = set(values) & set(op_config.get(name, {}))
        if clash:
            raise ValueError(f"run request {request.run_key}: overlay overrides {name} {clash}")
        op_config[name] = {**op_config.get(name, {}), **values}
    assert request.partition_key is not None
    return run_source(
        instance,
        request.partition_key,
        None,
        op_config=op_config,
        tags=request.tags,
        log_level=log_level,
    )


def read_table(db_path: Path, table: Table) -> pl.DataFrame:
    with warehouse.connect(db_path, read_only=True, table_root=env_table_root()) as con:
        return warehouse.read_source(con, table)


def run_ids_by_source(db_path: Path) -> dict[tuple[str, str], frozenset[str]]:
    """(table, source) -> the run ids that wrote that source's rows of that table."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for table in PER_SOURCE_TABLES:
        column = RUN_ID_COLUMN[table.stage]
        frame = read_table(db_path, table)
        for source, ids in frame.group_by("source").agg(pl.col(column).unique()).iter_rows():
            out[(table.name, source)] = frozenset(ids)
    return out


def rows_by_stage_and_source(db_path: Path) -> Counter[tuple[str, str]]:
    """(stage, source) -> rows, over that stage's per-source tables."""
    counts: Counter[tuple[str, str]] = Counter()
    for table in PER_SOURCE_TABLES:
        frame = read_table(db_path, table)
        for source, n in frame.group_by("source").len().iter_rows():
            counts[(table.stage, source)] += n
    return counts


def materializations(instance: dg.DagsterInstance) -> Counter[tuple[str, str | None]]:
    """(asset key, partition) -> how many materializations the instance has recorded."""
    counts: Counter[tuple[str, str | None]] = Counter()
    for key in instance.get_asset_keys():
        cursor = None
        while True:
            page = instance.fetch_materializations(key, limit=1_000, cursor=cursor)
            for record in page.records:
                counts[(key.to_user_string(), record.partition_key)] += 1
            if not page.has_more:
                break
            cursor = page.cursor
    return counts


def embedded_hashes(db_path: Path) -> set[str]:
    return set(read_table(db_path, EMBED_CACHE)["text_hash"].to_list())


def source_text_hashes(db_path: Path, source: str) -> set[str]:
    """Hashes of every text the scoring stage may embed for ``source``: turns and captions."""
    conversations = read_table(db_path, GENERATED_CONVERSATIONS).filter(pl.col("source") == source)
    turns = conversations.select(pl.col("turns").explode().struct.field("value")).to_series()
    captions = read_table(db_path, RAW_CAPTIONS).filter(pl.col("source") == source)["caption"]
    return {text_hash(t) for t in [*turns.to_list(), *captions.to_list()] if t}


def texts_embedded(result: dg.ExecuteInProcessResult) -> int:
    """The scored stage's ``texts_embedded`` metadata in this run."""
    return int(materialization_metadata(result, SCORED_CONVERSATIONS.name)["texts_embedded"])


@dataclass
class Snapshot:
    run_ids: dict[tuple[str, str], frozenset[str]]
    rows: Counter[tuple[str, str]]
    events: Counter[tuple[str, str | None]]
    embedded: set[str]

    @classmethod
    def take(cls, instance: dg.DagsterInstance, db_path: Path) -> Snapshot:
        return cls(
            run_ids_by_source(db_path),
            rows_by_stage_and_source(db_path),
            materializations(instance),
            embedded_hashes(db_path),
        )


def sources_with_new_run_ids(before: Snapshot, after: Snapshot) -> set[str]:
    return {
        source
        for key, ids in after.run_ids.items()
        if before.run_ids.get(key) != ids
        for source in [key[1]]
    }


def partitions_with_new_events(before: Snapshot, after: Snapshot) -> set[str | None]:
    return {key[1] for key, n in after.events.items() if n != before.events.get(key, 0)}
