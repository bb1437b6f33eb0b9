"""The scored stage through Dagster: metrics for generated and imported data, cached embeddings."""

from __future__ import annotations

import pytest

from vlit_assets.runner import run_source
from vlit_assets.testing.pipeline import (
    REPO,
    check_evaluation,
    materialization_metadata,
    pipeline_env,
)

STAGES = ("raw", "generated", "scored")


@pytest.mark.slow
def test_sample_is_scored_whole_and_rescoring_embeds_nothing(tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        first = run_source(env.instance, "sample", REPO / "data" / "sample", stages=STAGES)
        assert first.success
        generated = env.scalar("SELECT count(*) FROM generated__conversations")
        assert env.scalar("SELECT count(*) FROM scored__conversations") == generated
        meta = materialization_metadata(first, "scored__conversations")
        assert meta["texts_embedded"] > 0
        assert 0.0 < meta["metric/relevance_mean"] <= 1.0
        # Template answers are true of the annotations: no hallucination, consistent negatives.
        chair_s, neg = env.query(
            "SELECT avg(chair_s::INT), avg(negative_consistency) FROM scored__conversations "
            "WHERE instruction_type = 'negative'"
        )[0]
        assert chair_s == 0 and neg == 1.0
        history = env.scalar(
            "SELECT count(DISTINCT metric) FROM meta__dataset_metrics WHERE source = 'sample'"
        )
        assert history >= 10

        again = run_source(env.instance, "sample", None, stages=("scored",))
        assert again.success
        assert materialization_metadata(again, "scored__conversations")["texts_embedded"] == 0
        runs = env.scalar("SELECT count(DISTINCT run_id) FROM meta__dataset_metrics")
        assert runs == 2


@pytest.mark.slow
def test_paper_examples_are_scored_with_null_correctness(paper_examples, tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "paper", paper_examples, stages=STAGES)
        assert result.success
        rows = env.query(
            "SELECT instruction_type, chair_i, negative_consistency, count_consistency, "
            "relevance, n_turns FROM scored__conversations ORDER BY instruction_type"
        )
        assert [r[0] for r in rows] == ["global", "negative", "region"]
        assert [r[5] for r in rows] == [4, 9, 6]
        # No annotations for these images: correctness and relevance are unknown, not zero.
        assert all(r[1] is None and r[2] is None and r[3] is None and r[4] is None for r in rows)


@pytest.mark.slow
def test_imported_llava_with_an_annotating_source_gets_correctness_metrics(
    coco_mini, tmp_path, monkeypatch
):
    """QC-only mode on data we did not generate, judged by the COCO annotations of its images."""
    import json

    import polars as pl

    from vlit_assets.core import warehouse
    from vlit_assets.core.formats.writers import to_llava

    with pipeline_env(tmp_path, monkeypatch) as env:
        assert run_source(env.instance, "coco-mini", coco_mini, stages=("raw", "generated")).success
        with warehouse.connect(env.db_path, read_only=True) as con:
            rows = con.execute(
                "SELECT * FROM generated__conversations WHERE instruction_type <> 'region' "
                "AND drop_reason IS NULL ORDER BY conversation_id LIMIT 40"
            ).pl()
        dataset = tmp_path / "llava-set"
        dataset.mkdir()
        (dataset / "images").symlink_to(coco_mini / "train2017", target_is_directory=True)
        records = to_llava(rows, image_root=coco_mini / "train2017")
        (dataset / "instruct.json").write_text(json.dumps(records))

        result = run_source(
            env.instance, "llava-set", dataset, annotations_source="coco-mini", stages=STAGES
        )
        # Only global and negative rows were exported: the balance principle flags the missing
        # type, which is QC doing its job on data we did not make.
        evaluation = check_evaluation(result, "scored_suite")
        assert not evaluation.passed and "instruction_type_entropy_norm" in evaluation.description
        scored = pl.DataFrame(
            env.query(
                "SELECT chair_i, negative_consistency, relevance FROM scored__conversations "
                "WHERE source = 'llava-set'"
            ),
            schema=["chair_i", "negative_consistency", "relevance"],
            orient="row",
        )
        assert scored.height == rows.height
        assert scored["chair_i"].null_count() < scored.height
        assert scored["relevance"].null_count() == 0
        assert scored["negative_consistency"].drop_nulls().min() == 1.0


def test_threshold_config_mirrors_the_suite_thresholds():
    import dataclasses

    from vlit_assets.checks.asset_checks import ScoredSuiteConfig
    from vlit_assets.checks.scored_suite import PrincipleThresholds

    suite = {f.name: f.default for f in dataclasses.fields(PrincipleThresholds)}
    config = ScoredSuiteConfig()
    # the split expectation belongs to final_suite alone (FinalSuiteConfig)
    suite.pop("max_images_in_both_splits")
    assert config.model_dump(exclude={"blocking"}) == suite
    assert config.blocking is False  # input checks report; final_suite is the gate
    assert config.thresholds() == PrincipleThresholds()


@pytest.mark.slow
def test_scored_suite_fails_on_a_bad_batch_and_records_history(tmp_path, monkeypatch):
    """A too-strict band stands in for a bad batch: the check fails and says which figure."""
    with pipeline_env(tmp_path, monkeypatch) as env:
        config = {"scored__conversations_scored_suite": {"min_answer_words_mean": 1000.0}}
        result = run_source(
            env.instance, "sample", REPO / "data" / "sample", stages=STAGES, op_config=config
        )
        (evaluation,) = [
            e for e in result.get_asset_check_evaluations() if e.check_name == "scored_suite"
        ]
        assert not evaluation.passed
        failed = env.query(
            "SELECT expectation_id FROM meta__check_results "
            "WHERE check_name = 'scored_suite' AND NOT success"
        )
        assert any("answer_words_mean" in f[0] for f in failed)


def test_scored_suite_config_defaults_are_the_suite_defaults():
    from vlit_assets.checks.asset_checks import ScoredSuiteConfig
    from vlit_assets.checks.scored_suite import PrincipleThresholds

    config = ScoredSuiteConfig()
    assert config.thresholds() == PrincipleThresholds()
