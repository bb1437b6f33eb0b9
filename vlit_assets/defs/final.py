"""Final stage: scored conversations of every source -> decisions, the split, and the export."""

import json

import dagster as dg

from vlit_assets.core.final.balance import Balance
from vlit_assets.core.final.release import export_current
from vlit_assets.core.final.rules import Thresholds
from vlit_assets.core.final.split import SplitConfig
from vlit_assets.core.final.stage import select_and_store
from vlit_assets.core.schemas import (
    FINAL_CONVERSATIONS,
    FINAL_DECISIONS,
    SCORED_CONVERSATIONS,
)
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.resources import PROJECT_ROOT, EmbedderResource, ProjectPaths, WarehouseResource


class FinalConfig(dg.Config):
    """Rules, balance and split (core/final/rules.py, balance.py, split.py; docs/selection.md).

    None switches a rule off.

    Defaults come from core's dataclasses, so the UI's launchpad and a core caller agree.
    """

    max_chair_i: float = Thresholds.max_chair_i
    require_format_valid: bool = Thresholds.require_format_valid
    min_negative_consistency: float = Thresholds.min_negative_consistency
    min_count_consistency: float = Thresholds.min_count_consistency
    require_region_name_match: bool = Thresholds.require_region_name_match
    drop_denied_present: bool = Thresholds.drop_denied_present
    drop_example_copies: bool = Thresholds.drop_example_copies
    drop_annotation_leaks: bool = Thresholds.drop_annotation_leaks
    max_repeated_questions: int | None = Thresholds.max_repeated_questions
    drop_verifier_contradicted: bool = Thresholds.drop_verifier_contradicted
    drop_relation_contradicted: bool = Thresholds.drop_relation_contradicted
    max_grammar_errors: int | None = Thresholds.max_grammar_errors
    grammar_imported: bool = Thresholds.grammar_imported
    min_text_chars: int | None = Thresholds.min_text_chars
    max_text_chars: int | None = Thresholds.max_text_chars
    min_text_words: int | None = Thresholds.min_text_words
    max_word_rep_ratio: float | None = Thresholds.max_word_rep_ratio
    max_answer_rep_ratio: float | None = Thresholds.max_answer_rep_ratio
    max_special_char_ratio: float | None = Thresholds.max_special_char_ratio
    drop_text_near_copies: bool = Thresholds.drop_text_near_copies
    # image bounds from the header; the seven-filter recipe uses 100 px and 3.0
    min_image_side: int | None = Thresholds.min_image_side
    max_aspect_ratio: float | None = Thresholds.max_aspect_ratio
    max_image_bytes: int | None = Thresholds.max_image_bytes
    min_relevance: float | None = Thresholds.min_relevance
    relevance_max_z: float | None = Thresholds.relevance_max_z
    relevance_min_rows: int = Thresholds.relevance_min_rows
    min_answer_words_min: int = Thresholds.min_answer_words_min
    min_turns: int = Thresholds.min_turns
    drop_exact_duplicates: bool = Thresholds.drop_exact_duplicates
    neardup_threshold: float | None = Thresholds.neardup_threshold
    neardup_within: str | None = Thresholds.neardup_within
    max_share_per_type: float | None = Balance.max_share_per_type
    target_type_mix: dict[str, float] | None = Balance.target_type_mix
    max_per_category: int | None = Balance.max_per_category
    balance_seed: int = Balance.seed
    val_ratio: float = SplitConfig.val_ratio
    split_salt: str = SplitConfig.salt
    # What the split hashes: image_id (default; by the image's content hash, so an image and
    # every conversation about it, whatever its name or source, land on one side), or
    # conversation_id (leaks images between train and val).
    split_key: str = SplitConfig.key

    def thresholds(self) -> Thresholds:
        names = Thresholds.__dataclass_fields__
        return Thresholds(**{k: v for k, v in self.model_dump().items() if k in names})

    def balance(self) -> Balance:
        return Balance(
            max_share_per_type=self.max_share_per_type,
            target_type_mix=self.target_type_mix,
            max_per_category=self.max_per_category,
            seed=self.balance_seed,
        )

    def split(self) -> SplitConfig:
        return SplitConfig(val_ratio=self.val_ratio, salt=self.split_salt, key=self.split_key)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            FINAL_DECISIONS.name,
            group_name="final",
            description=FINAL_DECISIONS.doc,
            deps=[SCORED_CONVERSATIONS.name],
            kinds={"duckdb", "polars"},
        ),
        dg.AssetSpec(
            FINAL_CONVERSATIONS.name,
            group_name="final",
            description=FINAL_CONVERSATIONS.doc,
            deps=[SCORED_CONVERSATIONS.name],
            kinds={"duckdb", "polars"},
        ),
    ],
    pool=WRITER_POOL,
)
def final(
    context: dg.AssetExecutionContext,
    config: FinalConfig,
    warehouse_db: WarehouseResource,
    embedder: EmbedderResource,
):
    """One decision per scored conversation of every source; the kept rows with their split."""
    with warehouse_db.connect() as con:
        out = select_and_store(
            con,
            embedder=embedder.get,
            thresholds=config.thresholds(),
            balance=config.balance(),
            split=config.split(),
            run_id=context.run_id,
        )
    for source, why in sorted(out.held_back.items()):
        context.log.warning(f"source {source!r} held back: {why}")
    yield dg.MaterializeResult(asset_key=FINAL_DECISIONS.name, metadata=out.decisions_metadata())
    report = dg.MetadataValue.json(json.loads(json.dumps(out.selection.report, default=str)))
    yield dg.MaterializeResult(
        asset_key=FINAL_CONVERSATIONS.name,
        metadata={**out.kept_metadata(), "selection_report": report},
    )


@dg.asset(
    name="final__export",
    group_name="final",
    deps=[FINAL_CONVERSATIONS.name, FINAL_DECISIONS.name],
    pool=WRITER_POOL,
    kinds={"json", "parquet"},
)
def final__export(
    context: dg.AssetExecutionContext,
    warehouse_db: WarehouseResource,
    paths: ProjectPaths,
) -> dg.MaterializeResult:
    """One folder per export version: LLaVA JSON, paper format, Parquet, manifest and card."""
    with warehouse_db.connect() as con:
        out = export_current(
            con, exports_dir=paths.exports_dir, project_root=PROJECT_ROOT, run_id=context.run_id
        )
    return dg.MaterializeResult(
        metadata={
            "version": out.version,
            "path": dg.MetadataValue.path(str(out.target)),
            "status": out.status,
            "conversations": out.conversations,
        }
    )
