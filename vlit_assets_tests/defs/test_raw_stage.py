"""The raw stage materialized in process through Dagster, on real and corrupted COCO data."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from vlit_assets.core.raw.stage import RawOptions
from vlit_assets.defs.raw import RawConfig
from vlit_assets.runner import run_source
from vlit_assets.testing.pipeline import check_evaluation, pipeline_env
from vlit_assets_tests.corrupt import build_corrupted_coco


def test_run_config_has_the_fields_and_defaults_of_the_core_options():
    assert RawConfig().model_dump() == asdict(RawOptions())


@pytest.mark.slow
def test_coco_mini_counts_equal_source_files(coco_mini, tmp_path, monkeypatch):
    captions = json.loads((coco_mini / "annotations/captions_train2017.json").read_text())
    instances = json.loads((coco_mini / "annotations/instances_train2017.json").read_text())
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "coco-mini", coco_mini, stages=("raw",))
        assert result.success
        assert check_evaluation(result, "raw_suite").passed
        q = "SELECT count(*) FROM {} WHERE source = 'coco-mini'"
        assert env.scalar(q.format("raw__images")) == len(captions["images"]) == 80
        assert env.scalar(q.format("raw__captions")) == len(captions["annotations"]) == 400
        assert env.scalar(q.format("raw__objects")) == len(instances["annotations"]) == 739
        assert env.scalar(q.format("raw__categories")) == len(instances["categories"])
        assert env.scalar(q.format("raw__tags")) == 80
        assert env.scalar(q.format("raw__rejects")) == 0
        history = env.query(
            "SELECT count(*), bool_and(success) FROM meta__check_results WHERE source = 'coco-mini'"
        )
        assert history[0][0] > 0 and history[0][1] is True
        # The run is recorded in the instance with the materializations of every raw table.
        mats = result.get_asset_materialization_events()
        assert {m.asset_key.to_user_string() for m in mats} >= {"raw__images", "raw__rejects"}


@pytest.mark.slow
def test_rematerializing_a_partition_replaces_exactly_its_rows(coco_mini, tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "first", coco_mini, stages=("raw",)).success
        assert run_source(env.instance, "second", coco_mini, stages=("raw",)).success
        assert run_source(env.instance, "first", coco_mini, stages=("raw",)).success
        rows = dict(env.query("SELECT source, count(*) FROM raw__captions GROUP BY 1"))
        assert rows == {"first": 400, "second": 400}


@pytest.mark.slow
def test_corrupted_copy_rejects_each_fault_once_and_keeps_good_records(
    coco_mini, tmp_path, monkeypatch
):
    planted = build_corrupted_coco(coco_mini, tmp_path / "corrupt")
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "corrupt", tmp_path / "corrupt", stages=("raw",))
        assert result.success
        rejects = env.query(
            "SELECT reason, record_id FROM raw__rejects WHERE source = 'corrupt' "
            "AND reason <> 'parent_image_rejected'"
        )
        for fault in planted:
            hits = [r for r in rejects if r[0] == fault.reason and r[1] == str(fault.record_id)]
            assert len(hits) == 1, (fault, rejects)
        assert check_evaluation(result, "raw_suite").passed  # what was kept satisfies the suite


@pytest.mark.slow
def test_not_coco_shaped_file_fails_the_run_naming_file_and_key(coco_mini, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "train").mkdir()
    (bad / "annotations/captions_train.json").write_text(json.dumps({"images": []}))
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "bad", bad, stages=("raw",))
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        message = failure.step_failure_data.error.message
        assert "captions_train.json" in message and "annotations" in message


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["raw"])
def test_failing_blocking_check_is_reported(coco_mini, tmp_path, monkeypatch, stage):
    """A source whose every image is rejected leaves an empty raw__images: the suite fails."""
    empty = tmp_path / "noimages"
    (empty / "annotations").mkdir(parents=True)
    (empty / "train").mkdir()
    doc = {
        "images": [{"id": 1, "file_name": "missing.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a thing"}],
        "categories": [],
    }
    (empty / "annotations/captions_train.json").write_text(json.dumps(doc))
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "noimages", empty, stages=(stage,))
        evaluation = check_evaluation(result, "raw_suite")
        assert not evaluation.passed
        assert env.scalar("SELECT count(*) FROM raw__rejects WHERE reason = 'image_missing'") == 1


@pytest.mark.slow
def test_a_second_folder_under_a_known_name_is_refused_not_overwritten(
    coco_mini, tmp_path, monkeypatch
):
    from vlit_assets.testing.pipeline import REPO

    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "data", REPO / "data" / "sample", stages=("raw",)).success
        result = run_source(env.instance, "data", coco_mini, stages=("raw",))
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "is registered to" in failure.step_failure_data.error.message
        assert env.scalar("SELECT count(*) FROM raw__images WHERE source = 'data'") == 24


def _jpeg_bytes(seed: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.effect_noise((48, 32), seed).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def _record(rid: str, image: str) -> dict:
    return {
        "id": rid,
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "Grey noise."},
        ],
    }


@pytest.mark.slow
def test_images_option_reaches_the_import_and_parquet_bytes_land_in_the_output(
    tmp_path, monkeypatch
):
    import polars as pl

    source, folder = tmp_path / "llava", tmp_path / "image_folder"
    source.mkdir()
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg_bytes(1))
    (source / "d.jsonl").write_text(json.dumps(_record("j", "a.jpg")) + "\n", encoding="utf-8")
    pl.DataFrame(
        {
            "image": [{"bytes": _jpeg_bytes(2), "path": None}],
            "conversations": [_record("p", "x")["conversations"]],
        }
    ).write_parquet(source / "hf.parquet")
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "llava", source, images_dir=folder, stages=("raw",))
        assert result.success
        paths = [p for (p,) in env.query("SELECT image_path FROM raw__conversations ORDER BY 1")]
        assert len(paths) == 2
        assert str((folder / "a.jpg").resolve()) in paths
        cached = [p for p in paths if "import_images" in p]
        assert cached and cached[0].startswith(str(env.output_dir.resolve()))
        assert env.scalar("SELECT count(*) FROM raw__rejects") == 0
