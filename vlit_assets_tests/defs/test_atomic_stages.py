"""Each stage's table writes for a source commit together: a failure part-way keeps the old state.

A failure is injected right after a later table of a stage has been written (inside the stage's
transaction), so the earlier tables of that stage have new rows pending when it strikes.
"""

from __future__ import annotations

import polars as pl
import pytest

from vlit_assets.checks.raw_suite import validate_raw
from vlit_assets.core import warehouse
from vlit_assets.core.schemas import TABLES
from vlit_assets.runner import run_final, run_source
from vlit_assets.testing.pipeline import REPO, pipeline_env

SAMPLE = REPO / "data" / "sample"
# Tables whose rows a re-run rewrites on purpose before the stage's own writes (registration)
# or that are caches shared by every run.
NOT_STAGE_OUTPUT = {"meta__sources", "llm__cache", "embed__cache"}


def _state(env) -> dict[str, pl.DataFrame]:
    """Every stage table, whole, in key order."""
    out = {}
    with warehouse.connect(env.db_path, read_only=True) as con:
        for name, table in TABLES.items():
            if name in NOT_STAGE_OUTPUT or not warehouse.table_exists(con, name):
                continue
            out[name] = warehouse.read_source(con, table).sort(list(table.key))
    return out


def _fail_after_writing(monkeypatch, helper: str, table_name: str) -> None:
    """Make ``warehouse.<helper>`` write ``table_name`` and then raise."""
    real = getattr(warehouse, helper)

    def write_then_fail(con, table, *args):
        written = real(con, table, *args)
        name = table if isinstance(table, str) else table.name
        if name == table_name:
            raise RuntimeError(f"injected failure after writing {name}")
        return written

    monkeypatch.setattr(warehouse, helper, write_then_fail)


@pytest.mark.parametrize(
    ("stage", "helper", "table_name"),
    [
        ("raw", "replace_source", "raw__tags"),  # 5th of the seven raw tables
        ("scored", "upsert", "meta__dataset_metrics"),  # after scored__conversations
        ("final", "upsert", "final__runs"),  # after final__decisions and final__conversations
    ],
)
@pytest.mark.slow
def test_a_failure_after_a_later_table_write_leaves_the_previous_state_whole(
    stage, helper, table_name, tmp_path, monkeypatch
):
    stages = ("raw", "generated", "scored")
    with pipeline_env(tmp_path, monkeypatch) as env:
        upto = stages if stage == "final" else stages[: stages.index(stage) + 1]
        assert run_source(env.instance, "s", SAMPLE, stages=upto).success
        if stage == "final":
            assert run_final(env.instance).success
        before = _state(env)
        assert before["raw__images"].height == 24

        with monkeypatch.context() as patch:
            _fail_after_writing(patch, helper, table_name)
            if stage == "final":
                result = run_final(env.instance)
            else:  # the one stage again, over the state the run above left
                result = run_source(env.instance, "s", SAMPLE, stages=(stage,))
        assert not result.success
        failures = [e for e in result.all_events if e.is_step_failure]
        assert failures and "injected failure" in str(
            failures[0].step_failure_data.error.to_string()
        )

        after = _state(env)
        assert after.keys() == before.keys()
        for name, frame in before.items():
            assert after[name].equals(frame), f"{name} changed although the {stage} stage failed"
        with warehouse.connect(env.db_path, read_only=True) as con:
            assert validate_raw(con, "s").success


@pytest.mark.slow
def test_raw_suite_fails_on_captions_objects_and_tags_of_a_missing_image(tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "s", SAMPLE, stages=("raw",)).success
        with warehouse.connect(env.db_path) as con:
            (image_id,) = con.execute(
                "SELECT o.image_id FROM raw__objects o JOIN raw__tags t USING (image_id) "
                "ORDER BY 1 LIMIT 1"
            ).fetchone()
            con.execute("DELETE FROM raw__images WHERE image_id = ?", [image_id])
            outcome = validate_raw(con, "s")
    failed = {o.expectation_id for o in outcome.failed}
    assert {
        "captions.expect_column_values_to_be_in_set(has_image)",
        "objects.expect_column_values_to_be_in_set(has_image)",
        "tags.expect_column_values_to_be_in_set(has_image)",
    } <= failed
