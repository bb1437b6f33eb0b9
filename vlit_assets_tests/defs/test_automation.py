"""The incoming-batch sensor: new folders become partitions and runs; LLM only when allowed."""

from __future__ import annotations

import shutil

import dagster as dg

from vlit_assets.defs.automation import AutomationSettings, incoming_batches_sensor
from vlit_assets.resources import ProjectPaths
from vlit_assets_tests.pipeline import REPO


def _evaluate(instance, data_dir, settings: AutomationSettings):
    context = dg.build_sensor_context(
        instance=instance,
        resources={
            "paths": ProjectPaths(data_dir=str(data_dir), output_dir=str(data_dir)),
            "automation": settings,
        },
    )
    return incoming_batches_sensor(context)


def _settled(folder):
    """Backdate the annotation files, as if the copy finished a minute ago."""
    import os
    import time

    for f in (folder / "annotations").glob("*.json"):
        os.utime(f, (time.time() - 60, time.time() - 60))


def test_a_batch_whose_annotations_are_still_changing_waits(tmp_path):
    incoming = tmp_path / "data" / "incoming"
    shutil.copytree(REPO / "data" / "sample", incoming / "fresh")
    (incoming / "fresh" / "annotations" / "captions_train.json").touch()
    with dg.instance_for_test() as instance:
        assert isinstance(
            _evaluate(instance, tmp_path / "data", AutomationSettings()), dg.SkipReason
        )
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
        again = _evaluate(instance, tmp_path / "data", AutomationSettings())
        assert isinstance(again, dg.SkipReason)


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
