"""Planted-defect harnesses: collect coco-mini, plant known defects, score, and count what is found.

``plant_and_score`` plants the template kinds (``defects``) and scores every row with the real
embedder; ``plant_and_check`` plants the LLM kinds (``llm_defects``) and runs ``llm_checks``.
How precision and recall are counted is explained in vlit_assets_tests/core/test_planted_defects.py
and test_llm_checks.py, which hold the targets; benchmarks/defects.py and llm_defects.py print
the same figures for other seeds and sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates
from vlit_assets.core.metadata import mean
from vlit_assets.core.raw.annotations import find_coco_files
from vlit_assets.core.raw.collect import CollectResult, collect_source
from vlit_assets.core.scored.claims import grammar_checks, relation_claims
from vlit_assets.core.scored.embed import EmbeddingCache, MiniLMEmbedder
from vlit_assets.core.scored.llm_checks import llm_checks
from vlit_assets.core.scored.quality import score_conversations
from vlit_assets.testing.defects import plant_defects
from vlit_assets.testing.llm_defects import plant_llm_defects

SOURCE = "coco-mini"
PER_KIND = 30
SEED = 7

RULE_FOR_KIND = {
    "absent_object": "chair_s",
    "negative_flipped": "negative_inconsistent",
    "wrong_count": "count_inconsistent",
    "near_copy": "same_image_near_duplicate",
    "one_word_answer": "one_word_answer",
    "moved_image": "chair_i_majority",
    "present_denied": "negative_inconsistent",
}


@dataclass
class Planted:
    scored: pl.DataFrame  # scored__conversations of good + defective rows
    truth: pl.DataFrame  # conversation_id, defect, source_conversation_id
    captions: pl.DataFrame
    objects: pl.DataFrame
    good_ids: set[str]


def usable_templates(
    source: str, root: Path, regions_dir: Path
) -> tuple[CollectResult, pl.DataFrame]:
    """Collect a COCO-layout folder and write its usable template conversations (no images)."""
    raw = collect_source(source, root)
    good = generate_templates(
        raw.images,
        raw.captions,
        raw.objects,
        raw.categories,
        raw.tags,
        source=source,
        image_root=find_coco_files(root).image_dir,
        regions_dir=regions_dir,
        config=TemplateConfig(render_regions=False),
    ).filter(pl.col("drop_reason").is_null())
    return raw, good


def plant_and_score(
    root: Path, work: Path, *, per_kind: int = PER_KIND, seed: int = SEED
) -> Planted:
    """Collect, generate template conversations, plant every kind, score all rows once."""
    raw, good = usable_templates(SOURCE, root, work / "regions")
    bad, truth = plant_defects(good, raw.objects, raw.tags, seed=seed, per_kind=per_kind)
    with duckdb.connect(str(work / "cache.duckdb")) as con:
        result = score_conversations(
            pl.concat([good, bad]),
            objects=raw.objects,
            tags=raw.tags,
            categories=raw.categories,
            captions=raw.captions,
            embedder=MiniLMEmbedder(),
            cache=EmbeddingCache(con),
            run_id="planted",
        )
    return Planted(result.scored, truth, raw.captions, raw.objects, set(good["conversation_id"]))


def defect_flags(scored: pl.DataFrame) -> pl.DataFrame:
    """One row per conversation: a boolean column per rule (null metric = not flagged)."""
    same_image = (
        scored.filter(pl.col("cluster_size") > 1)
        .with_columns(seen=pl.coalesce("image_path", "image_id"))
        .filter(pl.len().over("cluster_id", "seen") > 1)
        .select("conversation_id")
    )
    return scored.select(
        "conversation_id",
        chair_s=pl.col("chair_s").fill_null(False),
        negative_inconsistent=(pl.col("negative_consistency") < 1).fill_null(False),
        count_inconsistent=(pl.col("count_consistency") < 1).fill_null(False),
        near_duplicate=(pl.col("cluster_size") > 1).fill_null(False)
        | pl.col("exact_duplicate_of").is_not_null(),
        same_image_near_duplicate=pl.col("conversation_id").is_in(
            same_image["conversation_id"].implode()
        )
        | pl.col("exact_duplicate_of").is_not_null(),
        one_word_answer=(pl.col("answer_words_min") <= 1).fill_null(False),
        chair_i_majority=(pl.col("chair_i") >= 0.5).fill_null(False),
        low_relevance=(pl.col("relevance") < 0.2).fill_null(False),
        region_mismatch=(~pl.col("region_name_match")).fill_null(False),
    )


def labelled(planted: Planted) -> pl.DataFrame:
    """The flags with each row's defect ('good' for unplanted rows) and source row."""
    return (
        defect_flags(planted.scored)
        .join(planted.truth, on="conversation_id", how="left")
        .with_columns(pl.col("defect").fill_null("good"))
    )


def precision_recall(frame: pl.DataFrame, kind: str, rule: str) -> tuple[float, float, int]:
    """(precision, recall, flagged) of ``rule`` for ``kind``, counted as the module says."""
    truth = frame["defect"] == kind
    counted = truth | (frame["defect"] == "good")
    if kind == "near_copy":
        sources = frame.filter(truth)["source_conversation_id"].implode()
        other_sources = frame.filter(~truth & (frame["defect"] != "good"))[
            "source_conversation_id"
        ].implode()
        is_source = frame["conversation_id"].is_in(sources)
        touched = frame["conversation_id"].is_in(other_sources) & ~is_source
        truth = truth | is_source
        counted = (truth | (frame["defect"] == "good")) & ~touched
    flagged = frame[rule] & counted
    hits = int((flagged & truth).sum())
    total = int(flagged.sum())
    precision = hits / total if total else 0.0
    recall = int((frame[rule] & (frame["defect"] == kind)).sum()) / int(
        (frame["defect"] == kind).sum()
    )
    return precision, recall, total


def plant_and_check(root: Path, work: Path, *, per_kind: int = PER_KIND, seed: int = 11):
    """Template rows of a COCO source plus planted LLM defects, through llm_checks, with the
    planted kind (``good`` for the rest) and one boolean column per rule."""
    raw = collect_source("coco-mini", root)
    good = generate_templates(
        raw.images, raw.captions, raw.objects, raw.categories, raw.tags,
        source="coco-mini", image_root=find_coco_files(root).image_dir,
        regions_dir=work / "regions", config=TemplateConfig(render_regions=False),
    ).filter(pl.col("drop_reason").is_null())  # fmt: skip
    bad, truth = plant_llm_defects(
        good, raw.objects, raw.tags, raw.captions, seed=seed, per_kind=per_kind
    )
    rows = pl.concat([good, bad])
    scored = llm_checks(rows, raw.objects, raw.tags, raw.captions, raw.categories)
    codes = pl.col("grammar_errors").list.eval(pl.element().str.extract(r"^(\w+):", 1))
    return (
        scored.join(relation_claims(rows, raw.objects), on="conversation_id")
        .join(grammar_checks(rows), on="conversation_id")
        .join(truth, on="conversation_id", how="left")
        .with_columns(pl.col("defect").fill_null("good"))
        .with_columns(
            denied_present=pl.col("n_denied_present").fill_null(0) > 0,
            repeated_question=pl.col("n_repeated_questions") > 0,
            unjudged_claim=pl.col("n_unjudged_claims") > 0,
            relation_contradicted=pl.col("n_relations_contradicted").fill_null(0) > 0,
            article=codes.list.contains("article"),
            number=codes.list.contains("number"),
            answer_form=codes.list.contains("yes_no") | codes.list.contains("sure"),
            grammar_error=pl.col("n_grammar_errors") > 0,
        )
    )


def llm_precision_recall(frame: pl.DataFrame, kind: str, rule: str) -> tuple[float, float, int]:
    """Over the good rows and the rows of ``kind`` (other kinds are neither right nor wrong)."""
    counted = frame.filter(pl.col("defect").is_in([kind, "good"]))
    flagged = counted.filter(pl.col(rule))
    precision = mean(flagged["defect"] == kind) or 0.0  # 0 when the rule flags nothing
    recall = mean(frame.filter(pl.col("defect") == kind)[rule])
    if recall is None:
        raise ValueError(f"no rows of kind {kind!r} to measure {rule!r} on")
    return precision, recall, flagged.height


LLM_RULE = {
    "denied_present": "denied_present",
    "example_copy": "example_copy",
    "annotation_leak": "annotation_leak",
    "repeated_question": "repeated_question",
    "unjudged_claim": "unjudged_claim",
    "wrong_relation": "relation_contradicted",
    "article_error": "article",
    "number_error": "number",
    "answer_form_error": "answer_form",
}
