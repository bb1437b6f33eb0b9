"""The incoming-batch sensor: new folders become partitions and runs; LLM only when allowed."""

from __future__ import annotations

import json
import os
import shutil
import time

import dagster as dg

from vlit_assets.defs.automation import AutomationSettings, incoming_batches_sensor
from vlit_assets.resources import ProjectPaths
from vlit_assets.testing.pipeline import REPO


def _evaluate(instance, data_dir, settings: AutomationSettings, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "paths": ProjectPaths(data_dir=str(data_dir), output_dir=str(data_dir)),
            "automation": settings,
        },
    )
    return incoming_batches_sensor(context)


def _settled(folder, age_s: float = 60):
    """Backdate the annotation files, as if the copy finished ``age_s`` seconds ago."""
    for f in (folder / "annotations").glob("*.json"):
        os.utime(f, (time.time() - age_s, time.time() - age_s))


def _skipped(result) -> bool:
    return not result.run_requests and result.skip_reason is not None


def test_a_batch_whose_annotations_are_still_changing_waits(tmp_path):
    incoming = tmp_path / "data" / "incoming"
    shutil.copytree(REPO / "data" / "sample", incoming / "fresh")
    (incoming / "fresh" / "annotations" / "captions_train.json").touch()
    with dg.instance_for_test() as instance:
        assert _skipped(_evaluate(instance, tmp_path / "data", AutomationSettings()))
        _settled(incoming / "fresh")
        result = _evaluate(instance, tmp_path / "data", AutomationSettings())
        assert [r.partition_key for r in result.run_requests] == ["fresh"]


def test_new_ready_batches_are_registered_and_requested_without_llm(tmp_path):
    incoming = tmp_path / "data" / "incoming"
    shutil.copytree(REPO / "data" / "sample", incoming / "batch-001")
    _settled(incoming / "batch-001")
    (incoming / "batch-002" / "annotations").mkdir(parents=True)  # still being copied
    (incoming / "Bad Name").mkdir()
    with dg.instance_for_test() as instance:
        result = _evaluate(instance, tmp_path / "data", AutomationSettings())
        assert isinstance(result, dg.SensorResult)
        assert [r.partition_key for r in result.run_requests] == ["batch-001"]
        request = result.run_requests[0]
        assert request.run_config["ops"]["generated__conversations"]["config"] == {"use_llm": False}
        (add,) = result.dynamic_partitions_requests
        assert list(add.partition_keys) == ["batch-001"]

        instance.add_dynamic_partitions("sources", ["batch-001"])
        again = _evaluate(instance, tmp_path / "data", AutomationSettings(), result.cursor)
        assert _skipped(again)


def test_llm_on_file_drop_needs_both_the_setting_and_a_budget(tmp_path):
    incoming = tmp_path / "data" / "incoming"
    shutil.copytree(REPO / "data" / "sample", incoming / "batch-001")
    _settled(incoming / "batch-001")
    with dg.instance_for_test() as instance:
        allowed_no_budget = AutomationSettings(llm_on_file_drop=True)
        result = _evaluate(instance, tmp_path / "data", allowed_no_budget)
        config = result.run_requests[0].run_config["ops"]["generated__conversations"]["config"]
        assert config["use_llm"] is False
        budgeted = AutomationSettings(llm_on_file_drop=True, llm_max_requests=50)
        result = _evaluate(instance, tmp_path / "data", budgeted)
        config = result.run_requests[0].run_config["ops"]["generated__conversations"]["config"]
        assert config == {"use_llm": True, "max_requests": 50, "max_cost_usd": None}


def test_a_known_batch_runs_again_once_its_annotations_change_and_settle(tmp_path):
    incoming = tmp_path / "data" / "incoming"
    batch = incoming / "batch-001"
    shutil.copytree(REPO / "data" / "sample", batch)
    _settled(batch)
    with dg.instance_for_test() as instance:
        first = _evaluate(instance, tmp_path / "data", AutomationSettings())
        (request,) = first.run_requests
        instance.add_dynamic_partitions("sources", ["batch-001"])

        # The user fixes the captions after a failed run: still changing, then settled.
        captions = batch / "annotations" / "captions_train.json"
        payload = json.loads(captions.read_text())
        payload["annotations"] = payload["annotations"][:-1]
        captions.write_text(json.dumps(payload))
        changing = _evaluate(instance, tmp_path / "data", AutomationSettings(), first.cursor)
        assert _skipped(changing)
        _settled(batch, age_s=30)
        rerun = _evaluate(instance, tmp_path / "data", AutomationSettings(), changing.cursor)
        (again,) = rerun.run_requests
        assert again.partition_key == "batch-001"
        assert again.run_key != request.run_key
        assert again.tags["vlit/reason"] == "annotations changed"
        assert not rerun.dynamic_partitions_requests  # the partition exists already

        quiet = _evaluate(instance, tmp_path / "data", AutomationSettings(), rerun.cursor)
        assert _skipped(quiet)


def test_a_partition_registered_elsewhere_is_adopted_not_rerun(tmp_path):
    batch = tmp_path / "data" / "incoming" / "batch-001"
    shutil.copytree(REPO / "data" / "sample", batch)
    _settled(batch)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sources", ["batch-001"])  # e.g. by `vlit run`
        adopted = _evaluate(instance, tmp_path / "data", AutomationSettings())
        assert _skipped(adopted)
        assert "batch-001" in json.loads(adopted.cursor)
