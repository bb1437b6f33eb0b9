"""Selection: each rule, null metrics, rule lists, dedup representatives, caps and the split."""

from __future__ import annotations

import random
from dataclasses import asdict

import numpy as np
import polars as pl
import pytest

from vlit_assets.core.final.balance import Balance
from vlit_assets.core.final.dedup import typicality
from vlit_assets.core.final.rules import RULES, Thresholds
from vlit_assets.core.final.select import DECISIONS_SCHEMA, decide
from vlit_assets.core.final.split import (
    IMAGE_HASH_COLUMN,
    SplitConfig,
    assign_split,
    images_in_both_splits,
)
from vlit_assets.core.schemas import SCORED_CONVERSATIONS
from vlit_assets.core.scored.figures import dataset_figures

DIM = 64
NO_DEDUP = Thresholds(neardup_threshold=None)


def row(cid: str, **over: object) -> dict:
    """A scored row that passes every default threshold."""
    base = {
        "conversation_id": cid,
        "source": "s1",
        "image_id": f"img_{cid}",
        "instruction_type": "global",
        "generator": "template",
        "variant": 0,
        "turns": [
            {"from": "human", "value": f"What is shown in picture {cid}?"},
            {"from": "gpt", "value": f"A dog sits on a couch in room {cid}."},
            {"from": "human", "value": "What colour is the dog?"},
            {"from": "gpt", "value": "The dog is brown."},
        ],
        "image_path": f"/data/images/{cid}.jpg",
        "drop_reason": None,
        "format_valid": True,
        "n_turns": 2,
        "chair_i": 0.0,
        "chair_s": False,
        "n_object_mentions": 3,
        "n_hallucinated": 0,
        "answer_words_min": 4,
        "answer_words_mean": 6.0,
        "relevance": 0.5,
        "novelty": 0.3,
        "norm_text_hash": f"hash_{cid}",
        "mentioned_categories": ["dog", "couch"],
        "tags_per_conversation": 2,
    }
    return base | over


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCORED_CONVERSATIONS.polars_schema)


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Random unit vectors in 64-d: pairwise cosines stay far below 0.95."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def near(v: np.ndarray, seed: int, eps: float = 0.05) -> np.ndarray:
    """A unit vector at cosine > 0.99 to ``v``."""
    w = v + eps * unit_vectors(1, seed)[0] / np.sqrt(DIM)
    return w / np.linalg.norm(w)


def by_id(decisions: pl.DataFrame) -> dict[str, dict]:
    return {r["conversation_id"]: r for r in decisions.iter_rows(named=True)}


# --------------------------------------------------------------------------- per-row rules

DEFECTS = [
    ({"drop_reason": "llm_unparseable", "turns": None}, "generation_failed"),
    ({"format_valid": False, "format_error": "not_alternating"}, "format_invalid"),
    ({"chair_i": 0.25}, "hallucination"),
    ({"negative_consistency": 0.5}, "negative_inconsistent"),
    ({"count_consistency": 0.0}, "count_inconsistent"),
    ({"instruction_type": "region", "region_name_match": False}, "region_name_mismatch"),
    ({"answer_words_min": 1}, "answers_too_short"),
    ({"n_turns": 0}, "too_few_turns"),
    ({"text_chars": 8, "text_words": 2}, "text_too_short"),
    ({"text_chars": 200, "text_words": 9}, "text_too_short"),
    ({"text_chars": 10_001}, "text_too_long"),
    ({"word_rep_ratio": 0.51}, "repetitive_text"),
    ({"answer_rep_ratio": 0.31}, "repetitive_answer"),
    ({"special_char_ratio": 0.3}, "special_characters"),
    ({"relevance": -0.05}, "low_relevance"),
    ({"generator": "llm", "n_denied_present": 1}, "denies_present_object"),
    ({"generator": "llm", "example_copy": True}, "example_copy"),
    ({"generator": "llm", "annotation_leak": True}, "annotation_leak"),
    ({"generator": "llm", "n_repeated_questions": 1}, "repeated_question"),
    ({"generator": "llm", "verified_contradicted": 2}, "verifier_contradicted"),
    ({"n_relations_contradicted": 1}, "relation_contradicted"),
    ({"n_grammar_errors": 1}, "grammar_error"),
    ({"generator": "llm", "n_grammar_errors": 2}, "grammar_error"),
]


@pytest.mark.parametrize(
    ("defect", "rule"), DEFECTS, ids=[f"{r}-{i}" for i, (_, r) in enumerate(DEFECTS)]
)
def test_each_rule_drops_its_defect(defect: dict, rule: str) -> None:
    scored = frame([row("conv_good"), row("conv_bad", **defect)])
    sel = decide(scored, unit_vectors(2))
    d = by_id(sel.decisions)
    assert d["conv_good"]["kept"] and d["conv_good"]["failing_rules"] == []
    assert d["conv_good"]["first_failing_rule"] is None
    assert not d["conv_bad"]["kept"]
    assert d["conv_bad"]["first_failing_rule"] == rule
    assert d["conv_bad"]["failing_rules"] == [rule]
    assert d["conv_bad"]["split"] is None
    assert sel.kept["conversation_id"].to_list() == ["conv_good"]
    assert sel.report["drops_by_first_rule"][rule] == 1


def test_grammar_of_imported_rows_is_judged_only_when_asked() -> None:
    scored = frame([row("conv_a", generator="import", n_grammar_errors=1)])
    assert decide(scored, unit_vectors(1)).decisions["kept"].to_list() == [True]
    strict = Thresholds(grammar_imported=True)
    decided = decide(scored, unit_vectors(1), strict).decisions
    assert decided["first_failing_rule"].to_list() == ["grammar_error"]


def test_metrics_at_the_threshold_pass() -> None:
    scored = frame(
        [
            row(
                "conv_edge",
                negative_consistency=1.0,
                count_consistency=1.0,
                region_name_match=True,
                answer_words_min=2,
                n_turns=2,
                relevance=0.2,
            )
        ]
    )
    assert decide(scored, unit_vectors(1)).decisions["kept"].to_list() == [True]


def test_null_metrics_never_fail() -> None:
    """QC-only data without annotations: every annotation metric and relevance is null."""
    nulls = dict.fromkeys(
        [
            "format_valid",
            "chair_i",
            "negative_consistency",
            "count_consistency",
            "region_name_match",
            "answer_words_min",
            "n_turns",
            "relevance",
            "norm_text_hash",
        ]
    )
    scored = frame([row("conv_a", **nulls), row("conv_b", **nulls, instruction_type="region")])
    vectors = unit_vectors(2)
    vectors[1] = np.nan  # a conversation without turn vectors is never a near duplicate
    sel = decide(scored, vectors)
    assert sel.decisions["kept"].to_list() == [True, True]
    assert sel.decisions["cluster_id"].to_list() == ["conv_a", "conv_b"]
    assert sel.decisions["exact_representative_id"].to_list() == ["conv_a", "conv_b"]


def test_switched_off_thresholds_keep_their_defects() -> None:
    scored = frame(
        [
            row("conv_fmt", format_valid=False),
            row("conv_region", region_name_match=False),
            row("conv_rel", relevance=-0.3),
        ]
    )
    loose = Thresholds(
        require_format_valid=False,
        require_region_name_match=False,
        min_relevance=None,
        neardup_threshold=None,
    )
    assert decide(scored, None, loose).decisions["kept"].all()
    assert not decide(scored, None, NO_DEDUP).decisions["kept"].any()


def test_a_row_lists_every_rule_it_fails_in_rule_order() -> None:
    bad = row("conv_bad", chair_i=0.5, answer_words_min=1, relevance=-0.1, n_turns=0)
    sel = decide(frame([row("conv_good"), bad]), unit_vectors(2))
    d = by_id(sel.decisions)["conv_bad"]
    assert d["failing_rules"] == [
        "hallucination",
        "answers_too_short",
        "too_few_turns",
        "low_relevance",
    ]
    assert d["first_failing_rule"] == "hallucination"
    assert sel.report["rows_failing_rule"]["low_relevance"] == 1
    assert sel.report["drops_by_first_rule"]["low_relevance"] == 0


# --------------------------------------------------------------------------- duplicates


def test_exact_duplicates_keep_the_best_ranked_copy() -> None:
    rows = [
        row("conv_a", norm_text_hash="same", chair_i=0.5, relevance=0.9),  # fails a rule
        row("conv_b", norm_text_hash="same", relevance=0.4),
        row("conv_c", norm_text_hash="same", relevance=0.6),
        row("conv_d"),
    ]
    sel = decide(frame(rows), unit_vectors(4))
    d = by_id(sel.decisions)
    assert [cid for cid, r in d.items() if r["kept"]] == ["conv_c", "conv_d"]
    assert d["conv_a"]["failing_rules"] == ["hallucination", "exact_duplicate"]
    assert d["conv_b"]["failing_rules"] == ["exact_duplicate"]
    assert {d[c]["exact_representative_id"] for c in ("conv_a", "conv_b", "conv_c")} == {"conv_c"}
    assert d["conv_d"]["exact_representative_id"] == "conv_d"
    keep_copies = Thresholds(drop_exact_duplicates=False)
    assert decide(frame(rows), unit_vectors(4), keep_copies).kept.height == 3


def test_near_duplicate_cluster_keeps_one_representative_by_the_documented_rule() -> None:
    # fewest failing rules, then highest relevance, then most turns, then smallest id
    rows = [
        row("conv_a", image_id="img_1", chair_i=0.5, relevance=0.95, n_turns=5),
        row("conv_b", image_id="img_1", relevance=0.5, n_turns=3),
        row("conv_e", image_id="img_1", relevance=0.5, n_turns=4),
        row("conv_d", image_id="img_1", relevance=0.5, n_turns=4),
        row("conv_z", image_id="img_1"),
    ]
    v = unit_vectors(5)
    for k in range(1, 4):
        v[k] = near(v[0], seed=k)
    sel = decide(frame(rows), v)
    d = by_id(sel.decisions)
    cluster = ["conv_a", "conv_b", "conv_e", "conv_d"]
    assert {d[c]["cluster_id"] for c in cluster} == {"conv_a"}
    assert {d[c]["representative_id"] for c in cluster} == {"conv_d"}
    assert d["conv_d"]["kept"] and d["conv_z"]["kept"]
    assert d["conv_z"]["cluster_id"] == d["conv_z"]["representative_id"] == "conv_z"
    assert d["conv_a"]["failing_rules"] == ["hallucination", "near_duplicate"]
    for c in ("conv_b", "conv_e"):
        assert d[c]["failing_rules"] == ["near_duplicate"]
    assert sel.report["neardup"]["clusters_with_copies"] == 1
    assert sel.report["neardup"]["rows_in_clusters_with_copies"] == 4


def test_near_duplicates_are_grouped_by_the_within_column_across_sources() -> None:
    rows = [
        row("conv_a", source="s1", image_id="img_s1_1", image_sha256="abc"),
        row("conv_b", source="s2", image_id="img_s2_1", image_sha256="abc"),
        row("conv_c", source="s2", image_id="img_s2_2", image_sha256="def"),
    ]
    scored = frame(rows).with_columns(pl.Series("image_sha256", [r["image_sha256"] for r in rows]))
    v = unit_vectors(3)
    v[1] = near(v[0], 1)
    v[2] = near(v[0], 2)
    by_image_id = decide(scored, v)  # default: same image_id only, so nothing pairs
    assert by_image_id.kept.height == 3
    by_content = decide(scored, v, Thresholds(neardup_within="image_sha256"))
    assert sorted(by_content.kept["conversation_id"]) == ["conv_a", "conv_c"]
    text_only = decide(scored, v, Thresholds(neardup_within=None))
    assert text_only.kept["conversation_id"].to_list() == ["conv_a"]
    assert text_only.decisions["cluster_id"].to_list() == ["conv_a"] * 3


def test_near_duplicate_selection_needs_matching_vectors() -> None:
    scored = frame([row("conv_a"), row("conv_b")])
    with pytest.raises(ValueError, match="neardup_threshold=None"):
        decide(scored, None)
    with pytest.raises(ValueError, match="one row per scored row"):
        decide(scored, unit_vectors(3))
    not_unit = unit_vectors(2) * 2
    with pytest.raises(ValueError, match="conv_a"):
        decide(scored, not_unit)
    assert decide(scored, None, NO_DEDUP).kept.height == 2


# --------------------------------------------------------------------------- balancing


def test_category_cap_limits_rows_per_category() -> None:
    rows = [row(f"conv_dog{i:02d}", mentioned_categories=["dog"]) for i in range(10)]
    rows += [row(f"conv_cat{i}", mentioned_categories=["cat"]) for i in range(3)]
    rows += [row("conv_both", mentioned_categories=["cat", "dog"])]
    rows += [row("conv_none", mentioned_categories=[])]
    sel = decide(frame(rows), None, NO_DEDUP, Balance(max_per_category=4))
    hist = sel.report["histograms"]["category"]
    assert hist["before_balance"]["dog"] == 11
    assert hist["after"]["dog"] == 4
    assert hist["after"]["cat"] == 4 or hist["after"]["cat"] == 3
    assert max(hist["after"].values()) <= 4
    assert "conv_none" in sel.kept["conversation_id"].to_list()
    dropped = sel.decisions.filter(~pl.col("kept"))
    assert set(dropped["first_failing_rule"]) == {"category_cap"}
    assert (
        sel.report["drops_by_first_rule"]["category_cap"] == dropped.height == 15 - sel.kept.height
    )


def test_type_share_cap() -> None:
    rows = [row(f"conv_g{i:02d}") for i in range(20)]
    rows += [row(f"conv_n{i}", instruction_type="negative") for i in range(5)]
    rows += [row(f"conv_r{i}", instruction_type="region") for i in range(5)]
    sel = decide(frame(rows), None, NO_DEDUP, Balance(max_share_per_type=0.5))
    types = sel.report["histograms"]["instruction_type"]
    assert types["before_balance"] == {"global": 20, "negative": 5, "region": 5}
    assert types["after"] == {"global": 10, "negative": 5, "region": 5}
    assert sel.report["drops_by_first_rule"]["type_share_cap"] == 10
    with pytest.raises(ValueError, match="unreachable"):
        decide(frame(rows), None, NO_DEDUP, Balance(max_share_per_type=0.3))


def test_target_type_mix() -> None:
    rows = [row(f"conv_g{i:02d}") for i in range(20)]
    rows += [row(f"conv_n{i:02d}", instruction_type="negative") for i in range(10)]
    rows += [row(f"conv_r{i}", instruction_type="region") for i in range(6)]
    rows += [row(f"conv_u{i}", instruction_type="unlabelled") for i in range(3)]
    mix = {"global": 2, "negative": 1, "region": 1}
    sel = decide(frame(rows), None, NO_DEDUP, Balance(target_type_mix=mix))
    types = sel.report["histograms"]["instruction_type"]
    assert types["before_balance"]["unlabelled"] == 3
    assert types["after"] == {"global": 12, "negative": 6, "region": 6}
    assert sel.report["drops_by_first_rule"]["type_mix"] == 39 - 24
    with pytest.raises(ValueError, match="region"):
        decide(frame(rows[:30]), None, NO_DEDUP, Balance(target_type_mix=mix))


def test_balancing_is_deterministic_for_a_seed_and_ignores_row_order() -> None:
    rows = [row(f"conv_g{i:02d}") for i in range(30)]
    rows += [row(f"conv_n{i:02d}", instruction_type="negative") for i in range(10)]
    cap = Balance(max_share_per_type=0.5, seed=7)
    first = decide(frame(rows), None, NO_DEDUP, cap).decisions.sort("conversation_id")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    again = decide(frame(shuffled), None, NO_DEDUP, cap).decisions.sort("conversation_id")
    assert first.equals(again)
    other_seed = decide(frame(rows), None, NO_DEDUP, Balance(max_share_per_type=0.5, seed=8))
    kept_7 = set(first.filter("kept")["conversation_id"])
    kept_8 = set(other_seed.kept["conversation_id"])
    assert len(kept_7) == len(kept_8) == 20
    assert kept_7 != kept_8


# --------------------------------------------------------------------------- whole decision


def test_drop_counts_add_up_and_decisions_have_the_schema() -> None:
    rows = [row(f"conv_{i:02d}") for i in range(12)]
    rows += [row(f"conv_bad{k}", **defect) for k, (defect, _) in enumerate(DEFECTS)]
    rows += [row("conv_copy", norm_text_hash="hash_conv_00", chair_i=0.5)]
    rows += [row(f"conv_neg{i}", instruction_type="negative") for i in range(2)]
    v = unit_vectors(len(rows))
    v[1] = near(v[0], 1)
    rows[1]["image_id"] = rows[0]["image_id"]
    sel = decide(frame(rows), v, Thresholds(), Balance(max_share_per_type=0.6))
    d = sel.decisions
    assert d.schema == pl.Schema(DECISIONS_SCHEMA)
    assert d.height == len(rows)
    dropped = d.filter(~pl.col("kept"))
    drops = sel.report["drops_by_first_rule"]
    assert list(drops) == list(RULES)
    assert sum(drops.values()) == dropped.height == sel.report["counts"]["dropped"]
    observed = dict(dropped.group_by("first_failing_rule").len().iter_rows())
    assert {k: v for k, v in drops.items() if v} == observed
    assert drops["near_duplicate"] == 1 and drops["type_share_cap"] > 0
    assert sel.report["counts"]["kept"] + dropped.height == len(rows)
    assert d.filter("kept")["split"].is_in(["train", "val"]).all()
    assert sel.kept["split"].to_list() == d.filter("kept")["split"].to_list()
    assert sel.report["settings"]["thresholds"] == asdict(Thresholds())


def test_report_shows_metrics_before_and_after() -> None:
    rows = [row(f"conv_{i}") for i in range(4)] + [row("conv_h", chair_i=0.5, n_hallucinated=3)]
    sel = decide(frame(rows), unit_vectors(5))
    before, after = sel.report["metrics"]["before"], sel.report["metrics"]["after"]
    assert before["chair_i"] > 0 and after["chair_i"] == 0
    assert before["n_conversations"] == 5 and after["n_conversations"] == 4
    assert 0 < after["semantic_spread"] <= 2
    dist = sel.report["distributions"]["relevance"]
    assert sum(dist["before"]["counts"]) == 5 and sum(dist["after"]["counts"]) == 4


def test_report_metrics_are_the_dataset_figures_of_the_rows() -> None:
    rows = [row(f"conv_{i}") for i in range(4)] + [row("conv_h", chair_i=0.5, n_hallucinated=3)]
    v = unit_vectors(5)
    sel = decide(frame(rows), v)
    before = sel.report["metrics"]["before"]
    expected = dataset_figures(frame(rows), v) | {"n_sources": 1}
    assert before.keys() == expected.keys()
    for key, value in expected.items():
        assert before[key] == pytest.approx(value, nan_ok=True), key


def test_a_held_back_source_is_set_aside_before_every_other_rule() -> None:
    rows = [row("conv_a", norm_text_hash="same", relevance=0.4), row("conv_b")]
    # conv_h ranks above conv_a as an exact copy and sits on conv_b's image with a near vector
    rows += [row("conv_h", source="s2", norm_text_hash="same", relevance=0.9, image_id="img_b")]
    v = unit_vectors(3)
    v[2] = near(v[1], 2)
    judged_alone = decide(frame(rows[:2]), v[:2])
    v[2] = np.nan  # the held rows' vectors are never read
    sel = decide(frame(rows), v, held_back={"s2"})
    d = by_id(sel.decisions)
    assert d["conv_h"]["failing_rules"] == ["source_held_back"] and not d["conv_h"]["kept"]
    assert sel.decisions["conversation_id"].to_list()[-1] == "conv_h"  # held rows come last
    assert sel.decisions.head(2).equals(judged_alone.decisions)
    assert sel.kept.equals(judged_alone.kept)
    assert list(RULES)[0] == "source_held_back"
    assert sel.report["drops_by_first_rule"]["source_held_back"] == 1
    assert sel.report["counts"]["scored"] == 3 and sel.report["counts"]["dropped"] == 1


def test_bad_input_is_refused_with_the_column_or_id() -> None:
    scored = frame([row("conv_a"), row("conv_a")])
    with pytest.raises(ValueError, match="conv_a"):
        decide(scored, None, NO_DEDUP)
    with pytest.raises(ValueError, match="relevance"):
        decide(frame([row("conv_a")]).drop("relevance"), None, NO_DEDUP)
    with pytest.raises(ValueError, match="max_chair_i"):
        Thresholds(max_chair_i=1.5)
    with pytest.raises(ValueError, match="max_share_per_type"):
        Balance(max_share_per_type=0.0)
    with pytest.raises(ValueError, match="val_ratio"):
        SplitConfig(val_ratio=1.0)


# --------------------------------------------------------------------------- split


def test_split_of_old_ids_is_unchanged_when_rows_are_added() -> None:
    cfg = SplitConfig(val_ratio=0.2)
    old = pl.Series([f"conv_{i:04d}" for i in range(500)])
    added = pl.concat([pl.Series([f"conv_new{i:04d}" for i in range(500)]), old.reverse()])
    before = dict(zip(old, assign_split(old, cfg), strict=True))
    after = dict(zip(added, assign_split(added, cfg), strict=True))
    assert all(after[cid] == split for cid, split in before.items())
    share = sum(s == "val" for s in after.values()) / len(after)
    assert 0.15 < share < 0.25
    other_salt = assign_split(old, SplitConfig(val_ratio=0.2, salt="other"))
    assert other_salt.to_list() != list(before.values())


def test_decided_splits_survive_a_new_batch() -> None:
    batch1 = [row(f"conv_a{i:03d}") for i in range(60)]
    batch2 = [row(f"conv_b{i:03d}", source="s2") for i in range(60)]
    cfg = SplitConfig(val_ratio=0.3)
    first = decide(frame(batch1), None, NO_DEDUP, split=cfg).decisions
    both = decide(frame(batch2 + batch1), None, NO_DEDUP, split=cfg).decisions
    old = first.select("conversation_id", "split").join(
        both.select("conversation_id", "split"), on="conversation_id", suffix="_later"
    )
    assert old.height == 60
    assert (old["split"] == old["split_later"]).all()
    assert set(first["split"]) == {"train", "val"}


def test_split_by_image_keeps_an_image_together() -> None:
    rows = [row(f"conv_{img}_{k}", image_id=f"img_{img}") for img in range(40) for k in range(3)]
    sel = decide(frame(rows), None, NO_DEDUP, split=SplitConfig(val_ratio=0.3, key="image_id"))
    per_image = sel.kept.group_by("image_id").agg(pl.col("split").n_unique().alias("n"))
    assert (per_image["n"] == 1).all()
    assert set(sel.kept["split"]) == {"train", "val"}


def test_image_bounds_are_off_by_default_and_drop_when_set() -> None:
    small = {"image_width": 64, "image_height": 80, "image_bytes": 900}
    wide = {"image_width": 1200, "image_height": 300, "image_bytes": 90_000}
    scored = frame([row("conv_good"), row("conv_small", **small), row("conv_wide", **wide)])
    assert decide(scored, unit_vectors(3)).kept.height == 3
    t = Thresholds(min_image_side=100, max_aspect_ratio=3.0, max_image_bytes=50_000)
    d = by_id(decide(scored, unit_vectors(3), t).decisions)
    assert d["conv_good"]["kept"]
    assert d["conv_small"]["failing_rules"] == ["image_too_small"]
    assert d["conv_wide"]["failing_rules"] == ["image_aspect_ratio", "image_too_large"]


def test_text_near_copies_keep_the_first_in_source_order_that_passes() -> None:
    rows = [
        row("conv_a", variant=5, text_cluster_id="conv_b"),
        row("conv_b", variant=1, text_cluster_id="conv_b"),
        row("conv_c", variant=9, text_cluster_id="conv_b"),
        row("conv_d", variant=2, text_cluster_id="conv_d"),
    ]
    d = by_id(decide(frame(rows), unit_vectors(4)).decisions)
    assert d["conv_b"]["kept"] and d["conv_d"]["kept"]
    assert d["conv_a"]["failing_rules"] == ["near_copy_text"]
    assert d["conv_c"]["failing_rules"] == ["near_copy_text"]
    # when the first one fails a row rule, the next in source order stands in for the group
    rows[1] = row("conv_b", variant=1, text_cluster_id="conv_b", answer_words_min=1)
    d = by_id(decide(frame(rows), unit_vectors(4)).decisions)
    assert d["conv_b"]["first_failing_rule"] == "answers_too_short"
    assert d["conv_a"]["kept"] and d["conv_c"]["failing_rules"] == ["near_copy_text"]
    off = Thresholds(drop_text_near_copies=False)
    assert decide(frame(rows), unit_vectors(4), off).kept.height == 3


def test_rows_scored_before_the_text_filters_are_not_judged_by_them() -> None:
    old = frame([row("conv_a"), row("conv_b")]).drop(
        "text_chars", "text_words", "word_rep_ratio", "text_cluster_id", "image_width"
    )
    assert decide(old, unit_vectors(2)).kept.height == 2


def test_default_split_puts_no_image_on_both_sides() -> None:
    # Three conversations per image (global, negative, region): hashed per conversation, a
    # val share of 0.3 puts some image on both sides; the default (image_id) never does.
    rows = [row(f"conv_{img}_{k}", image_id=f"img_{img}") for img in range(60) for k in range(3)]
    by_conv = decide(frame(rows), None, NO_DEDUP, split=SplitConfig(0.3, key="conversation_id"))
    assert images_in_both_splits(by_conv.kept) > 0  # the rule below can fail
    sel = decide(frame(rows), None, NO_DEDUP, split=SplitConfig(0.3))
    assert SplitConfig().key == "image_id"
    assert images_in_both_splits(sel.kept) == 0
    assert set(sel.kept["split"]) == {"train", "val"}


def test_the_same_picture_under_two_names_splits_together() -> None:
    # Imported rows name their images themselves: the content hash keeps copies together.
    rows = [
        row(f"conv_{img}_{src}", image_id=f"img_{src}_{img}", source=src)
        for img in range(60)
        for src in ("coco", "imported")
    ]
    scored = frame(rows).with_columns(
        pl.col("image_id").str.extract(r"_(\d+)$").alias(IMAGE_HASH_COLUMN)
    )
    sel = decide(scored, None, NO_DEDUP, split=SplitConfig(0.3))
    per_picture = sel.kept.group_by(IMAGE_HASH_COLUMN).agg(pl.col("split").n_unique())
    assert (per_picture["split"] == 1).all()
    assert images_in_both_splits(sel.kept) == 0
    # Without the hash column the two names are two images, and some land apart.
    by_name = decide(frame(rows), None, NO_DEDUP, split=SplitConfig(0.3))
    apart = by_name.kept.with_columns(pl.col("image_id").str.extract(r"_(\d+)$").alias("pic"))
    assert (apart.group_by("pic").agg(pl.col("split").n_unique())["split"] > 1).any()


def _region(cid: str, box: str, answer: str, **over: object) -> dict:
    turns = [
        {"from": "human", "value": "What is inside the red box?"},
        {"from": "gpt", "value": "That is a banana."},
        {"from": "human", "value": "Where is the boxed banana?"},
        {"from": "gpt", "value": answer},
    ]
    return row(cid, image_id="img_1", instruction_type="region", region_object_id=box,
               turns=turns, **over)  # fmt: skip


def test_region_conversations_about_different_boxes_are_not_near_duplicates() -> None:
    rows = [
        _region("conv_a", "obj_1", "It is in the top-left part of the image."),
        _region("conv_b", "obj_2", "It is in the top-right part of the image."),
        _region("conv_c", "obj_1", "It is in the top-left part of the picture."),
    ]
    v = unit_vectors(3)
    v[1] = near(v[0], 1)
    v[2] = near(v[0], 2)
    sel = decide(frame(rows), v)
    d = by_id(sel.decisions)
    assert d["conv_b"]["kept"]  # another banana: its own conversation
    assert d["conv_a"]["kept"] != d["conv_c"]["kept"]  # the same box twice: one stays
    assert sel.report["neardup"]["pairs"] == 1


def test_a_garbled_near_copy_does_not_win_on_relevance() -> None:
    # Many rows share the template words; the copy swaps one for a word no other row uses.
    common = [
        _region(f"conv_{k}", f"obj_{k}", "It is in the top-left part of the image.")
        for k in range(6)
    ]
    original = _region("conv_orig", "obj_9", "It is in the top-left part of the image.",
                       relevance=0.30)  # fmt: skip
    copy = _region("conv_copy", "obj_9", "It is in the quiet-left part of the image.",
                   relevance=0.35)  # fmt: skip
    rows = [*common, copy, original]
    v = unit_vectors(len(rows))
    v[-1] = near(v[-2], 3)
    scored = frame(rows)
    sel = decide(scored, v)
    d = by_id(sel.decisions)
    assert d["conv_orig"]["kept"] and not d["conv_copy"]["kept"]
    assert d["conv_copy"]["representative_id"] == "conv_orig"
    typ = dict(zip(scored["conversation_id"], typicality(scored), strict=True))
    assert typ["conv_orig"] > typ["conv_copy"]


def _typed(n: int, itype: str, centre: float, spread: float, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        row(
            f"conv_{itype}_{k}",
            instruction_type=itype,
            relevance=centre + rng.uniform(-spread, spread),
        )
        for k in range(n)
    ]


def test_relevance_is_judged_within_each_instruction_type() -> None:
    # Region rows score low by construction (0.02-0.30 here): the old fixed 0.2 cut would drop
    # a third of them. Judged within their type only the real outliers go: a global row at
    # 0.05 among globals around 0.55, and any row below the floor of 0.
    rows = _typed(60, "global", 0.55, 0.15, 1) + _typed(60, "region", 0.16, 0.14, 2)
    rows += [
        row("conv_global_off", instruction_type="global", relevance=0.05),
        row("conv_region_neg", instruction_type="region", relevance=-0.05),
    ]
    scored = frame(rows)
    sel = decide(scored, None, NO_DEDUP)
    low = set(
        sel.decisions.filter(pl.col("failing_rules").list.contains("low_relevance"))[
            "conversation_id"
        ]
    )
    assert low == {"conv_global_off", "conv_region_neg"}
    floors = sel.report["relevance_floors"]
    assert floors["region"] < 0.0 < 0.05 < floors["global"] < 0.4
    assert sum(r["relevance"] < 0.2 for r in rows) >= 20  # what a fixed 0.2 would have dropped
    # A type with too few rows to calibrate is judged by the floor only.
    few = decide(frame(rows[:10] + rows[-2:]), None, NO_DEDUP)
    assert few.report["relevance_floors"] == {}
    assert set(
        few.decisions.filter(pl.col("failing_rules").list.contains("low_relevance"))[
            "conversation_id"
        ]
    ) == {"conv_region_neg"}
