"""Every asset check of the project, built from the suites; definitions.py lists them.

Partitions and the writer pool come in as arguments, so nothing here imports ``defs/``. The
launchpad-editable pass bands (``ScoredSuiteConfig``, ``FinalSuiteConfig``) take their defaults
from the suites' own dataclasses.
"""

from __future__ import annotations

import dagster as dg
import duckdb

from vlit_assets.checks.factory import build_suite_check
from vlit_assets.checks.final_suite import FINAL_THRESHOLDS, validate_final
from vlit_assets.checks.generated_suite import validate_generated
from vlit_assets.checks.gx_runner import SuiteOutcome
from vlit_assets.checks.raw_suite import validate_raw
from vlit_assets.checks.scored_suite import PrincipleThresholds, validate_scored_table
from vlit_assets.core.schemas import (
    FINAL_CONVERSATIONS,
    GENERATED_CONVERSATIONS,
    RAW_IMAGES,
    SCORED_CONVERSATIONS,
)
from vlit_assets.core.vocab import FINAL_SUITE, GENERATED_SUITE, RAW_SUITE, SCORED_SUITE

_T = PrincipleThresholds
_F = FINAL_THRESHOLDS


class SuiteThresholdsConfig(dg.Config):
    """Pass bands of the principle suites (checks/scored_suite.PrincipleThresholds); None = off.

    Defaults are PrincipleThresholds' own, where each band's measured values are noted.
    """

    max_chair_s_rate: float = _T.max_chair_s_rate
    min_negative_consistency: float = _T.min_negative_consistency
    min_count_consistency: float = _T.min_count_consistency
    min_region_name_match: float = _T.min_region_name_match
    min_format_valid_rate: float = _T.min_format_valid_rate
    min_type_entropy_norm: float = _T.min_type_entropy_norm
    min_category_entropy_norm: float | None = _T.min_category_entropy_norm
    yes_ratio_min: float = _T.yes_ratio_min
    yes_ratio_max: float = _T.yes_ratio_max
    max_near_duplicate_rate: float = _T.max_near_duplicate_rate
    max_exact_duplicate_share: float = _T.max_exact_duplicate_share
    min_relevance_mean: float | None = _T.min_relevance_mean
    min_answer_words_mean: float = _T.min_answer_words_mean
    min_turns_mean: float = _T.min_turns_mean
    min_tags_per_conversation_mean: float = _T.min_tags_per_conversation_mean
    max_one_word_answer_share: float = _T.max_one_word_answer_share
    min_samples_for_distribution: int = _T.min_samples_for_distribution

    def thresholds(self) -> PrincipleThresholds:
        return PrincipleThresholds(**self.model_dump(exclude={"blocking"}))


class ScoredSuiteConfig(SuiteThresholdsConfig):
    """The scored suite's bands, and whether a failure is a gate."""

    # False (default): the suite measures a source's input and reports a failure as a warning;
    # the final stage filters the source and final_suite guards what ships. True: the old strict
    # behaviour, where a failure fails the run and holds the whole source back.
    blocking: bool = False


class FinalSuiteConfig(SuiteThresholdsConfig):
    """Stricter bands than the scored suite (checks/final_suite.FINAL_THRESHOLDS)."""

    max_chair_s_rate: float = _F.max_chair_s_rate
    min_region_name_match: float = _F.min_region_name_match
    min_format_valid_rate: float = _F.min_format_valid_rate
    min_negative_consistency: float = _F.min_negative_consistency
    min_count_consistency: float = _F.min_count_consistency
    min_type_entropy_norm: float = _F.min_type_entropy_norm
    max_exact_duplicate_share: float = _F.max_exact_duplicate_share
    min_relevance_mean: float | None = _F.min_relevance_mean
    max_one_word_answer_share: float = _F.max_one_word_answer_share
    max_images_in_both_splits: float | None = _F.max_images_in_both_splits


def _scored(con: duckdb.DuckDBPyConnection, source: str, config: ScoredSuiteConfig):
    return validate_scored_table(con, source, config.thresholds())


def _final(con: duckdb.DuckDBPyConnection, _source: str, config: FinalSuiteConfig) -> SuiteOutcome:
    return validate_final(con, config.thresholds())


def build_asset_checks(
    *, sources_partitions: dg.PartitionsDefinition, pool: str
) -> list[dg.AssetChecksDefinition]:
    """The four suite checks: per source (raw, generated, scored), then on what ships (final)."""
    return [
        build_suite_check(
            name=RAW_SUITE,
            asset=RAW_IMAGES.name,
            validate=validate_raw,
            description=(
                "GX suite: unique ids, boxes inside their image, every image captioned, "
                "categories declared, no null paths."
            ),
            partitions_def=sources_partitions,
            pool=pool,
        ),
        build_suite_check(
            name=GENERATED_SUITE,
            asset=GENERATED_CONVERSATIONS.name,
            validate=validate_generated,
            description=(
                "GX suite: turns alternate human/gpt from human, no empty text, known types, "
                "region images exist, unique ids, LLaVA export carries the image token."
            ),
            partitions_def=sources_partitions,
            pool=pool,
        ),
        build_suite_check(
            name=SCORED_SUITE,
            asset=SCORED_CONVERSATIONS.name,
            validate=_scored,
            description=(
                "GX suite of the quality principles on a source's scored input: correctness "
                "(CHAIR, negative, count, region), balance (type entropy, yes-ratio), diversity "
                "(duplicates), relevance, complexity. Not a gate by default: a failure is a WARN, "
                "because the final stage filters the source's bad rows and final_suite guards what "
                "ships; `blocking: true` makes it a gate."
            ),
            config_cls=ScoredSuiteConfig,
            gate_field="blocking",
            partitions_def=sources_partitions,
            pool=pool,
        ),
        build_suite_check(
            name=FINAL_SUITE,
            asset=FINAL_CONVERSATIONS.name,
            validate=_final,
            description=(
                "GX principle suite on what ships, with stricter bounds; blocks the export."
            ),
            config_cls=FinalSuiteConfig,
            pool=pool,
        ),
    ]
