"""The final stage through Dagster: decisions, a stable split, a gated export that round-trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vlit_assets.core.formats.files import load_instruction_file
from vlit_assets.runner import run_final, run_source
from vlit_assets.testing.openai_server import FakeOpenAIServer
from vlit_assets.testing.pipeline import (
    REPO,
    check_evaluation,
    materialization_metadata,
    pipeline_env,
)

SAMPLE = REPO / "data" / "sample"


@pytest.mark.slow
def test_sample_ends_in_an_export_that_agrees_with_final_conversations(tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "sample", SAMPLE).success
        final = run_final(env.instance)
        assert final.success and check_evaluation(final, "final_suite").passed
        decisions = materialization_metadata(final, "final__decisions")
        dropped_by_rule = sum(v for k, v in decisions.items() if k.startswith("drops/"))
        assert dropped_by_rule == decisions["dropped"]
        assert decisions["texts_embedded"] == 0  # stored vectors only

        export = materialization_metadata(final, "final__export")
        folder = env.output_dir / "exports" / export["version"]
        manifest = json.loads((folder / "manifest.json").read_text())
        kept = env.query("SELECT conversation_id, split FROM final__conversations")
        splits = {}
        for _, split in kept:
            splits[split] = splits.get(split, 0) + 1
        llava = {
            split: json.loads((folder / f"llava_{split}.json").read_text()) for split in splits
        }
        assert {s: len(v) for s, v in llava.items()} == splits
        assert sum(splits.values()) == len(kept) > 0
        assert manifest["code_version"].startswith("vlit_assets")
        assert [s["source"] for s in manifest["sources"]] == ["sample"]
        files = env.query("SELECT path, sha256 FROM final__export_files")
        assert len(files) >= 5
        for path, digest in files:
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest

        # Re-import (QC-only mode) gives back the same conversations.
        back = load_instruction_file(folder / "llava_train.json", source="reimport")
        assert back.rejects.height == 0
        exported = {
            tuple((t["from"], t["value"]) for t in r["turns"]) for r in back.rows.to_dicts()
        }
        stored = {
            tuple((t["from"], t["value"]) for t in turns)
            for (turns,) in env.query(
                "SELECT turns FROM final__conversations WHERE split = 'train'"
            )
        }
        assert exported == stored


@pytest.mark.slow
def test_threshold_change_reuses_scores_and_adding_a_batch_keeps_splits(
    coco_mini, tmp_path, monkeypatch
):
    with FakeOpenAIServer() as server, pipeline_env(tmp_path, monkeypatch) as env:
        # An LLM endpoint is configured, so the sample also gets self-instruct rows.
        monkeypatch.setenv("VLIT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("VLIT_LLM_MODEL", "test-model")
        llm_types = {"generated__conversations": {"llm_types": ["global"]}}
        assert run_source(env.instance, "sample", SAMPLE, op_config=llm_types).success
        assert run_final(env.instance).success
        before = dict(env.query("SELECT conversation_id, split FROM final__conversations"))
        embedded = env.scalar("SELECT count(*) FROM embed__cache")
        requests = len(server.log)
        assert requests > 0

        stricter = {"final": {"min_relevance": 0.4}}
        result = run_final(env.instance, op_config=stricter)
        # Re-deciding re-uses stored scores: no text embedded, no LLM request sent.
        assert materialization_metadata(result, "final__decisions")["texts_embedded"] == 0
        assert env.scalar("SELECT count(*) FROM embed__cache") == embedded
        assert len(server.log) == requests
        dropped = env.scalar(
            "SELECT count(*) FROM final__decisions WHERE first_failing_rule = 'low_relevance'"
        )
        assert dropped > 0

        templates_only = {"generated__conversations": {"use_llm": False}}
        assert run_source(env.instance, "coco-mini", coco_mini, op_config=templates_only).success
        assert run_final(env.instance).success
        after = dict(env.query("SELECT conversation_id, split FROM final__conversations"))
        assert len(after) > len(before)
        moved = [c for c, s in before.items() if c in after and after[c] != s]
        assert moved == []


@pytest.mark.slow
def test_a_failing_final_suite_blocks_the_export(tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "sample", SAMPLE).success
        impossible = {"final__conversations_final_suite": {"min_answer_words_mean": 500.0}}
        result = run_final(env.instance, op_config=impossible)
        assert not check_evaluation(result, "final_suite").passed
        assert not result.success
        assert not (env.output_dir / "exports").exists() or not any(
            (env.output_dir / "exports").iterdir()
        )
        assert "final__export" not in {
            m.asset_key.to_user_string() for m in result.get_asset_materialization_events()
        }


@pytest.mark.slow
def test_a_held_back_source_gets_a_decision_with_its_reason(tmp_path, monkeypatch):
    """With ``blocking: true`` (the old strict behaviour) a failed scored_suite is a gate."""
    with pipeline_env(tmp_path, monkeypatch) as env:
        strict = {
            "scored__conversations_scored_suite": {
                "min_answer_words_mean": 1000.0,
                "blocking": True,
            }
        }
        assert not run_source(env.instance, "sample", SAMPLE, op_config=strict).success
        run_final(env.instance)
        rows = env.query(
            "SELECT kept, first_failing_rule, count(*) FROM final__decisions GROUP BY ALL"
        )
        scored = env.scalar("SELECT count(*) FROM scored__conversations")
        assert rows == [(False, "source_held_back", scored)]
        assert env.scalar("SELECT count(*) FROM final__conversations") == 0


@pytest.mark.slow
def test_a_failed_scored_suite_reports_and_the_source_is_filtered_not_held_back(
    tmp_path, monkeypatch
):
    """By default the suite measures the input: its failure is a warning, recorded as such,
    and the final rules (not the suite) decide which of the source's rows ship."""
    with pipeline_env(tmp_path, monkeypatch) as env:
        impossible = {"scored__conversations_scored_suite": {"min_answer_words_mean": 1000.0}}
        result = run_source(env.instance, "sample", SAMPLE, op_config=impossible)
        assert result.success
        evaluation = check_evaluation(result, "scored_suite")
        assert not evaluation.passed
        assert evaluation.severity.value == "WARN"
        severities = env.query(
            "SELECT DISTINCT severity FROM meta__check_results WHERE check_name = 'scored_suite'"
        )
        assert severities == [("WARN",)]
        final = run_final(env.instance)
        assert final.success
        held = env.scalar(
            "SELECT count(*) FROM final__decisions WHERE first_failing_rule = 'source_held_back'"
        )
        assert held == 0
        assert env.scalar("SELECT count(*) FROM final__conversations") > 0


@pytest.mark.slow
def test_scores_left_behind_by_a_blocked_run_do_not_ship(tmp_path, monkeypatch):
    """A later run whose raw suite fails keeps the old scores in place; they must be held back."""
    import shutil

    batch = tmp_path / "batch"
    shutil.copytree(SAMPLE, batch)
    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "batch", batch).success
        # Every image of the batch is now missing: the raw suite fails and blocks scoring.
        for image in (batch / "train").iterdir():
            image.unlink()
        assert not run_source(env.instance, "batch", batch).success
        run_final(env.instance)
        reasons = env.query("SELECT DISTINCT first_failing_rule FROM final__decisions")
        assert reasons == [("source_held_back",)]


def test_final_config_defaults_are_the_core_defaults():
    from vlit_assets.core.final.balance import Balance
    from vlit_assets.core.final.rules import Thresholds
    from vlit_assets.core.final.split import SplitConfig
    from vlit_assets.defs.final import FinalConfig

    config = FinalConfig()
    assert config.thresholds() == Thresholds()
    assert config.balance() == Balance()
    assert config.split() == SplitConfig()
    assert FinalConfig(min_relevance=None, val_ratio=0.2).thresholds().min_relevance is None
    # every core threshold can be set from the launchpad
    import dataclasses

    missing = [
        f.name for f in dataclasses.fields(Thresholds) if f.name not in FinalConfig.model_fields
    ]
    assert missing == []
