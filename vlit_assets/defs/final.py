"""Final stage: scored conversations of every source -> decisions, the split, and the export."""

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl

from vlit_assets.checks.factory import build_suite_check
from vlit_assets.checks.scored_suite import (
    stored_dataset_figures,
    validate_scored,
)
from vlit_assets.core import warehouse
from vlit_assets.core.final.export import sha256_file, write_export
from vlit_assets.core.final.select import (
    DECISIONS_SCHEMA,
    IMAGE_HASH_COLUMN,
    Balance,
    SplitConfig,
    Thresholds,
    decide,
    images_in_both_splits,
)
from vlit_assets.core.generated.prompts import PROMPT_VERSION
from vlit_assets.core.generated.templates import TEMPLATE_VERSION
from vlit_assets.core.raw.collect import find_coco_files
from vlit_assets.core.raw.imports import image_root_of
from vlit_assets.core.schemas import (
    FINAL_CONVERSATIONS,
    FINAL_DECISIONS,
    FINAL_EXPORT_FILES,
    FINAL_RUNS,
    META_CHECK_RESULTS,
    META_SOURCES,
    RAW_IMAGES,
    SCORED_CONVERSATIONS,
)
from vlit_assets.core.scored.embed import MINILM_DIM, EmbeddingCache, conversation_vectors
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.defs.scored import PrincipleThresholdsConfig, record_dataset_metrics
from vlit_assets.resources import PROJECT_ROOT, EmbedderResource, ProjectPaths, WarehouseResource

ALL_SOURCES = "*"


GATING_CHECK = "principles_suite"


def failing_sources(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Sources whose rows must not ship, with why.

    A source is held back when the latest raw or generated suite of the source failed (a
    blocked run leaves the previous scores in place, which no longer match the data), when no
    principles check ran for its current scores, or when that check failed as a gate
    (``blocking: true``, recorded as severity ERROR). A failure recorded as WARN, the default,
    holds nothing back: the final rules filter the source's rows and final_suite guards what
    ships. Records from before severities existed (null) count as gates, as they were.
    """
    if not warehouse.table_exists(con, "scored__conversations"):
        return {}
    if not warehouse.table_exists(con, "meta__check_results"):
        sources = con.execute("SELECT DISTINCT source FROM scored__conversations").fetchall()
        return {s: "no check results recorded" for (s,) in sources}
    warehouse.ensure_table(con, META_CHECK_RESULTS)  # severity came later
    rows = con.execute(
        """
        WITH runs AS (
            SELECT source, run_id, check_name,
                   bool_and(coalesce(success, true))
                     OR bool_and(coalesce(severity, 'ERROR') = 'WARN') AS passed,
                   max(evaluated_at) AS checked_at
            FROM meta__check_results GROUP BY ALL
        ), latest AS (
            SELECT source, check_name, passed FROM runs
            QUALIFY row_number() OVER (PARTITION BY source, check_name ORDER BY checked_at DESC) = 1
        ), scored AS (
            SELECT source, any_value(scored_run_id) AS scored_run_id
            FROM scored__conversations GROUP BY source
        )
        SELECT s.source,
               CASE
                 WHEN EXISTS (SELECT 1 FROM latest l WHERE l.source = s.source
                              AND l.check_name IN ('raw_suite', 'generated_suite')
                              AND NOT l.passed)
                   THEN 'its latest raw or generated suite failed'
                 WHEN NOT EXISTS (SELECT 1 FROM runs r WHERE r.source = s.source
                                  AND r.check_name = ? AND r.run_id = s.scored_run_id
                                  AND r.passed)
                   THEN 'its principles check did not pass as a gate for its current scores'
               END AS reason
        FROM scored s
        """,
        [GATING_CHECK],
    ).fetchall()
    return {source: reason for source, reason in rows if reason is not None}


def stored_vectors(
    scored: pl.DataFrame, embedder: EmbedderResource, cache: EmbeddingCache
) -> np.ndarray:
    """Conversation vectors of the rows scoring embedded (from the cache: thresholds change
    without re-embedding, counted in ``texts_embedded``); NaN rows, never paired as semantic
    near duplicates, for rows it did not embed. The model is not loaded when no row has one."""
    embedded = scored["embed_model"].is_not_null().to_numpy()
    vectors = np.full((scored.height, MINILM_DIM), np.nan, dtype=np.float32)
    if embedded.any():
        rows = scored.filter(pl.Series(embedded))
        vectors[embedded] = conversation_vectors(rows, embedder.get(), cache).conversation
    return vectors


HELD_BACK_RULE = "source_held_back"


def held_back_decisions(held: pl.DataFrame) -> pl.DataFrame:
    """A decision row for each conversation of a held-back source, so none vanishes unexplained."""
    return held.select(
        "conversation_id",
        "source",
        pl.lit(False).alias("kept"),
        pl.lit(HELD_BACK_RULE).alias("first_failing_rule"),
        pl.lit([HELD_BACK_RULE]).alias("failing_rules"),
        pl.lit(None, pl.String).alias("split"),
        pl.lit(None, pl.String).alias("cluster_id"),
        pl.lit(None, pl.String).alias("representative_id"),
        pl.lit(None, pl.String).alias("exact_representative_id"),
    ).cast(DECISIONS_SCHEMA)


class FinalConfig(dg.Config):
    """Thresholds and balance (core/select.py, docs/selection.md); None switches a rule off.

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
        gated = failing_sources(con)
        everything = warehouse.read_source(con, SCORED_CONVERSATIONS)
        held = everything.filter(pl.col("source").is_in(sorted(gated)))
        for source, why in sorted(gated.items()):
            context.log.warning(f"source {source!r} held back: {why}")
        scored = everything.filter(~pl.col("source").is_in(sorted(gated))).sort("conversation_id")
        scored = with_image_hashes(con, scored)
        cache = EmbeddingCache(con)
        vectors = stored_vectors(scored, embedder, cache)
        selection = decide(scored, vectors, config.thresholds(), config.balance(), config.split())
        run_id = context.run_id
        decisions = pl.concat(
            [selection.decisions, held_back_decisions(held)], how="vertical"
        ).with_columns(pl.lit(run_id).alias("run_id"))
        kept = selection.kept.drop(IMAGE_HASH_COLUMN).with_columns(
            pl.lit(run_id).alias("final_run_id")
        )
        figures = stored_dataset_figures(kept.drop("split", "final_run_id"))
        # Decisions, kept rows, the run report and the figures commit together: a failure
        # part-way leaves the previous split whole.
        with warehouse.transaction(con):
            warehouse.replace_all(con, FINAL_DECISIONS, decisions)
            warehouse.replace_all(con, FINAL_CONVERSATIONS, kept)
            warehouse.upsert(
                con,
                FINAL_RUNS,
                pl.DataFrame(
                    {
                        "final_run_id": [run_id],
                        "report": [json.dumps(selection.report, default=str)],
                        "held_back": [[f"{k}: {v}" for k, v in sorted(gated.items())]],
                        "created_at": [datetime.now(UTC).replace(tzinfo=None)],
                    },
                    schema=FINAL_RUNS.polars_schema,
                ),
            )
            record_dataset_metrics(
                con, figures, run_id=run_id, asset=FINAL_CONVERSATIONS.name, source=ALL_SOURCES
            )
    drops = decisions.filter(~pl.col("kept")).group_by("first_failing_rule").len()
    splits = kept.group_by("split").len()
    yield dg.MaterializeResult(
        asset_key=FINAL_DECISIONS.name,
        metadata={
            "dagster/row_count": decisions.height,
            "dropped": decisions.height - kept.height,
            "texts_embedded": cache.encoded,
            "sources_held_back": "; ".join(f"{k}: {v}" for k, v in sorted(gated.items())) or "none",
            **{f"drops/{rule}": n for rule, n in drops.sort("first_failing_rule").iter_rows()},
        },
    )
    yield dg.MaterializeResult(
        asset_key=FINAL_CONVERSATIONS.name,
        metadata={
            "dagster/row_count": kept.height,
            **{f"split/{s}": n for s, n in splits.sort("split").iter_rows()},
            **{f"metric/{k}": float(v) for k, v in figures.items() if v is not None},
            "selection_report": dg.MetadataValue.json(
                json.loads(json.dumps(selection.report, default=str))
            ),
        },
    )


class FinalSuiteConfig(PrincipleThresholdsConfig):
    """Stricter bands than the scored stage: what ships must hold the principles."""

    max_chair_s_rate: float = 0.0
    min_region_name_match: float = 1.0
    min_format_valid_rate: float = 1.0
    min_negative_consistency: float = 1.0
    min_count_consistency: float = 1.0
    min_type_entropy_norm: float = 0.85
    max_exact_duplicate_share: float = 0.0
    min_relevance_mean: float | None = 0.30
    max_one_word_answer_share: float = 0.0
    max_images_in_both_splits: float | None = 0.0  # no image on both sides of the split


def with_image_hashes(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` plus ``image_sha256`` from raw__images (null where the image is unknown)."""
    hashes = (
        warehouse.read_source(con, RAW_IMAGES)
        .select("source", "image_id", pl.col("sha256").alias(IMAGE_HASH_COLUMN))
        .unique(["source", "image_id"])
    )
    return rows.join(hashes, on=["source", "image_id"], how="left", maintain_order="left")


# Figures the final rules cannot restore in someone else's dataset without dropping good rows
# (polarity, the type mix, how many rounds and tags a conversation has): on what we generated
# they gate; on imported rows they are reported, and type caps or a target mix in FinalConfig
# enforce a balance when wanted.
GENERATED_ONLY_FIGURES = (
    "instruction_type_entropy_norm",
    "yes_ratio",
    "turns_mean",
    "tags_per_conversation_mean",
)


def final_figures(rows: pl.DataFrame) -> tuple[dict, dict[str, str]]:
    """Dataset figures of what ships, and the figures left unjudged with why.

    Balance figures that imported rows cannot be held to are computed over generated rows.
    """
    figures = stored_dataset_figures(rows)
    generated = rows.filter(pl.col("generator") != "import")
    unjudged: dict[str, str] = {}
    if generated.height == rows.height:
        return figures, unjudged
    if generated.is_empty():
        reason = "imported rows only: balance is reported, not gated"
        unjudged = {name: reason for name in GENERATED_ONLY_FIGURES}
        return figures, unjudged
    own = stored_dataset_figures(generated)
    for name in GENERATED_ONLY_FIGURES:
        figures[name] = own[name]
    return figures, unjudged


def validate_final(con: duckdb.DuckDBPyConnection, _source: str, config: FinalSuiteConfig):
    shipped = warehouse.read_source(con, FINAL_CONVERSATIONS)
    leaked = images_in_both_splits(with_image_hashes(con, shipped))
    rows = shipped.drop("split", "final_run_id")
    figures, unjudged = final_figures(rows)
    figures["images_in_both_splits"] = leaked
    return validate_scored(rows, figures, config.thresholds(), unjudged=unjudged)


final_suite_check = build_suite_check(
    name="final_suite",
    asset=FINAL_CONVERSATIONS.name,
    validate=validate_final,
    description="GX principle suite on what ships, with stricter bounds; blocks the export.",
    config_cls=FinalSuiteConfig,
)


def _source_files(record: dict) -> dict[str, str]:
    """sha256 of the annotation or instruction files a source was read from."""
    root = Path(record["root"])
    if record["kind"] == "import":
        files = sorted(p for p in root.iterdir() if p.suffix in {".json", ".jsonl"})
    else:
        files = sorted((root / "annotations").glob("*.json"))
    return {str(p.relative_to(root)): sha256_file(p) for p in files if p.is_file()}


def _code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"vlit_assets {package_version('vlit_assets')} ({commit})"


def _image_root(record: dict) -> Path:
    root = Path(record["root"])
    if record["kind"] == "import":
        return image_root_of(root)
    return find_coco_files(root, record["split"]).image_dir


def export_version(kept: pl.DataFrame, settings: dict) -> str:
    """Content-addressed: the same rows, texts, splits and settings give the same version.

    Images enter by id and file name, not by absolute path, so the same data built in another
    checkout or on another machine gets the same version.
    """
    digest = hashlib.blake2b(digest_size=6)
    rows = kept.select(
        "conversation_id",
        "split",
        "norm_text_hash",
        "image_id",
        pl.col("image_path").str.replace(r"^.*[/\\]", ""),
    )
    for cid, split, text, image_id, image_file in rows.sort("conversation_id").iter_rows():
        # Ids alone are not enough: a new seed or model changes the text under the same id.
        digest.update(f"{cid}:{split}:{text}:{image_id}:{image_file}\n".encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"v-{digest.hexdigest()}"


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
        kept = warehouse.read_source(con, FINAL_CONVERSATIONS)
        decisions = warehouse.read_source(con, FINAL_DECISIONS)
        sources = warehouse.read_source(con, META_SOURCES).to_dicts()
        report = _report_of(con, kept)
        used = set(kept["source"].unique().to_list())
        records = [r for r in sources if r["source"] in used]
        settings = report.get("settings", {}) if isinstance(report, dict) else {}
        version = export_version(kept, settings)
        target = paths.exports_dir / version
        if target.exists():
            status = "unchanged: this version was already exported"
        else:
            result = write_export(
                kept.drop("final_run_id"),
                decisions.drop("run_id"),
                out_dir=paths.exports_dir,
                version=version,
                image_root_by_source={r["source"]: _image_root(r) for r in records},
                manifest_extra={
                    "sources": [
                        {
                            "source": r["source"],
                            "kind": r["kind"],
                            "root": r["root"],
                            "files": _source_files(r),
                        }
                        for r in records
                    ],
                    "code_version": _code_version(),
                    "template_version": TEMPLATE_VERSION,
                    "prompt_version": PROMPT_VERSION,
                    "image_source": "; ".join(sorted(used)),
                },
                report=report,
            )
            now = datetime.now(UTC).replace(tzinfo=None)
            files = [*result.files.items(), ("manifest.json", result.version_dir / "manifest.json")]
            rows = pl.DataFrame(
                [
                    {
                        "version": version,
                        "format": _format_of(name),
                        "split": _split_of(name),
                        "path": str(path),
                        "sha256": sha256_file(path),
                        "run_id": context.run_id,
                        "created_at": now,
                    }
                    for name, path in files
                ],
                schema=FINAL_EXPORT_FILES.polars_schema,
            )
            warehouse.upsert(con, FINAL_EXPORT_FILES, rows)
            status = f"written: {len(files)} files"
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "path": dg.MetadataValue.path(str(target)),
            "status": status,
            "conversations": kept.height,
        }
    )


def _report_of(con: duckdb.DuckDBPyConnection, kept: pl.DataFrame) -> dict:
    """The selection report of the final run that wrote the kept rows (from DuckDB)."""
    run_ids = kept["final_run_id"].unique().to_list()
    if len(run_ids) != 1 or not warehouse.table_exists(con, FINAL_RUNS.name):
        return {}
    row = con.execute(
        "SELECT report FROM final__runs WHERE final_run_id = ?", [run_ids[0]]
    ).fetchone()
    return json.loads(row[0]) if row else {}


def _format_of(name: str) -> str:
    for prefix, kind in (("llava", "llava"), ("paper", "paper"), ("charts/", "chart")):
        if name.startswith(prefix):
            return kind
    return {".parquet": "parquet", ".md": "card", ".json": "manifest"}.get(
        Path(name).suffix, "other"
    )


def _split_of(name: str) -> str | None:
    stem = Path(name).stem
    return next((s for s in ("train", "val") if stem.endswith(f"_{s}")), None)
