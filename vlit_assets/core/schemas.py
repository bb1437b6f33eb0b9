"""Table names, columns and DuckDB types for every stage; the one source of truth for both.

A table name is ``<stage>__<name>``; the stage is also the Dagster group and the module under
``vlit_assets/defs``. Every table that holds data of a source carries a ``source`` column: it is
the partition key, and re-materializing a source replaces exactly its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Table:
    name: str
    columns: dict[str, str]  # column -> DuckDB type, in order
    key: tuple[str, ...]  # columns that identify a row
    doc: str
    partitioned: bool = True  # rows carry `source` and are replaced per source
    # A large per-row table: with a table root configured it lives in Parquet files that many
    # writers share (core/tablestore.py), not in the DuckDB file.
    file_backed: bool = False

    @property
    def stage(self) -> str:
        return self.name.split("__", 1)[0]

    @property
    def polars_schema(self) -> pl.Schema:
        """The same columns as polars dtypes, for building frames that insert without casts."""
        return pl.Schema({c: polars_dtype(t) for c, t in self.columns.items()})

    def empty_frame(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema)

    def ddl(self) -> str:
        cols = ", ".join(f'"{c}" {t}' for c, t in self.columns.items())
        return f'CREATE TABLE IF NOT EXISTS "{self.name}" ({cols})'


_SCALARS: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(),
    "BIGINT": pl.Int64(),
    "INTEGER": pl.Int32(),
    "DOUBLE": pl.Float64(),
    "FLOAT": pl.Float32(),
    "BOOLEAN": pl.Boolean(),
    "TIMESTAMP": pl.Datetime("us"),
    "JSON": pl.String(),
}


def polars_dtype(duck: str) -> pl.DataType:
    """Translate the DuckDB types used in this module (scalars, lists, flat structs)."""
    duck = duck.strip()
    if duck.endswith("[]"):
        return pl.List(polars_dtype(duck[:-2]))
    if duck.startswith("STRUCT(") and duck.endswith(")"):
        fields = {}
        for part in duck[len("STRUCT(") : -1].split(","):
            name, kind = part.strip().rsplit(" ", 1)
            fields[name.strip('"')] = polars_dtype(kind)
        return pl.Struct(fields)
    return _SCALARS[duck]


TURN = 'STRUCT("from" VARCHAR, "value" VARCHAR)'
PRESENT_TAG = "STRUCT(category_id INTEGER, name VARCHAR, count INTEGER)"
ABSENT_TAG = "STRUCT(category_id INTEGER, name VARCHAR, score DOUBLE)"

RAW_IMAGES = Table(
    "raw__images",
    {
        "image_id": "VARCHAR",  # stable_id("img", source, coco_image_id)
        "source": "VARCHAR",
        "coco_image_id": "BIGINT",
        "file_name": "VARCHAR",  # path relative to the source's image root
        "width": "INTEGER",  # decoded pixel size, as stored
        "height": "INTEGER",
        "oriented_width": "INTEGER",  # size after applying the EXIF orientation
        "oriented_height": "INTEGER",
        "format": "VARCHAR",
        "mode": "VARCHAR",
        "bytes": "BIGINT",
        "sha256": "VARCHAR",
        "run_id": "VARCHAR",
    },
    ("image_id",),
    "One row per valid image of a source.",
    file_backed=True,
)

RAW_CAPTIONS = Table(
    "raw__captions",
    {
        "caption_id": "VARCHAR",  # stable_id("cap", source, coco_annotation_id)
        "source": "VARCHAR",
        "coco_caption_id": "BIGINT",
        "image_id": "VARCHAR",
        "coco_image_id": "BIGINT",
        "caption": "VARCHAR",
        "run_id": "VARCHAR",
    },
    ("caption_id",),
    "One row per caption of a valid image.",
    file_backed=True,
)

RAW_OBJECTS = Table(
    "raw__objects",
    {
        "object_id": "VARCHAR",  # stable_id("obj", source, coco_annotation_id)
        "source": "VARCHAR",
        "coco_annotation_id": "BIGINT",
        "image_id": "VARCHAR",
        "coco_image_id": "BIGINT",
        "category_id": "INTEGER",
        "category_name": "VARCHAR",
        "bbox_x": "DOUBLE",  # COCO box: top-left corner, width, height, in pixels
        "bbox_y": "DOUBLE",
        "bbox_w": "DOUBLE",
        "bbox_h": "DOUBLE",
        "area": "DOUBLE",
        "iscrowd": "BOOLEAN",
        "run_id": "VARCHAR",
    },
    ("object_id",),
    "One row per object annotation (box + category) of a valid image.",
    file_backed=True,
)

RAW_CATEGORIES = Table(
    "raw__categories",
    {
        "source": "VARCHAR",
        "category_id": "INTEGER",
        "name": "VARCHAR",
        "supercategory": "VARCHAR",
        "run_id": "VARCHAR",
    },
    ("source", "category_id"),
    "One row per declared category of a source.",
    file_backed=True,
)

RAW_TAGS = Table(
    "raw__tags",
    {
        "image_id": "VARCHAR",
        "source": "VARCHAR",
        "present": f"{PRESENT_TAG}[]",  # annotated categories with object counts
        "absent": f"{ABSENT_TAG}[]",  # plausible absent categories, best candidate first
        "absent_strategy": "VARCHAR",  # how `absent` was ranked (co-occurrence, popularity)
        "run_id": "VARCHAR",
    },
    ("image_id",),
    "One row per valid image: present categories and ranked plausible absent ones.",
    file_backed=True,
)

RAW_REJECTS = Table(
    "raw__rejects",
    {
        "reject_id": "VARCHAR",  # stable_id("rej", source, file, record_id, field, reason)
        "source": "VARCHAR",
        "file": "VARCHAR",  # the annotation or image file the problem is in
        "record_id": "VARCHAR",  # the record's id in that file (image, annotation, category)
        "field": "VARCHAR",
        "reason": "VARCHAR",  # a code from REJECT_REASONS
        "detail": "VARCHAR",  # a sentence a person can act on
        "run_id": "VARCHAR",
    },
    ("reject_id",),
    "One row per problem found in a source; good records of the same source still proceed.",
    file_backed=True,
)


GENERATED_CONVERSATIONS = Table(
    "generated__conversations",
    {
        # stable_id("conv", source, image_id, instruction_type, generator, prompt_version, variant)
        "conversation_id": "VARCHAR",
        "source": "VARCHAR",
        "image_id": "VARCHAR",
        "instruction_type": "VARCHAR",  # global | negative | region
        "generator": "VARCHAR",  # template | llm | import
        "variant": "INTEGER",
        "turns": f"{TURN}[]",  # from: human | gpt; first turn is human
        "image_path": "VARCHAR",  # the image the conversation is about (region image for region)
        "region_object_id": "VARCHAR",  # the boxed object of a region conversation
        "source_annotation_ids": "VARCHAR[]",  # caption/object ids the conversation was built from
        "model": "VARCHAR",
        "prompt_version": "VARCHAR",
        "prompt_tokens": "INTEGER",
        "completion_tokens": "INTEGER",
        "latency_ms": "DOUBLE",
        "cache_hit": "BOOLEAN",
        "drop_reason": "VARCHAR",  # a DROP_REASONS code when the generator made no usable sample
        "drop_detail": "VARCHAR",  # the specific cause behind drop_reason, in words or a key
        "run_id": "VARCHAR",
    },
    ("conversation_id",),
    "One row per generated (or imported) conversation, failed generations included.",
    file_backed=True,
)

GENERATED_LLM_REQUESTS = Table(
    "generated__llm_requests",
    {
        "conversation_id": "VARCHAR",  # the generated__conversations row the request is for
        "source": "VARCHAR",
        "request_hash": "VARCHAR",  # llm__cache key
        "model": "VARCHAR",
        "prompt_version": "VARCHAR",
        "cache_hit": "BOOLEAN",
        "attempts": "INTEGER",  # HTTP attempts this run (0 for a cache hit or an unsent request)
        "wait_ms": "DOUBLE",  # backoff and slot waits between attempts
        "latency_ms": "DOUBLE",  # first send to final answer
        "finish_reason": "VARCHAR",
        "error": "VARCHAR",  # request error (timeout, http_503, deadline, ...) or null
        "parse_failure": "VARCHAR",  # replies.FAILURES key, or null
        "detail": "VARCHAR",  # what the error or parse failure was, in words
        "repaired": "VARCHAR",  # what the parser mended (e.g. "closed 1 bracket"), or null
        "prompt_tokens": "INTEGER",
        "completion_tokens": "INTEGER",
        "run_id": "VARCHAR",
    },
    ("conversation_id",),
    "One row per LLM request of the self-instruct generator: attempts, waits, errors, repairs.",
)

GENERATED_LLM_VERIFICATION = Table(
    "generated__llm_verification",
    {
        "conversation_id": "VARCHAR",  # a usable LLM conversation of generated__conversations
        "source": "VARCHAR",
        "verifier_model": "VARCHAR",
        "verifier_prompt_version": "VARCHAR",
        "request_hash": "VARCHAR",  # llm__cache key of the verification request
        "n_answers": "INTEGER",
        "verified_supported": "INTEGER",  # answers the verifier found supported
        "verified_contradicted": "INTEGER",
        "verified_unknown": "INTEGER",  # claims the annotations cannot settle
        "verified_share": "DOUBLE",  # supported / answers; null when the verifier gave no verdict
        "verdicts": "VARCHAR[]",  # per answer, in order
        "error": "VARCHAR",  # llm_error:<cause> or llm_parse:<failure>; null when verified
        "cache_hit": "BOOLEAN",
        "prompt_tokens": "INTEGER",
        "completion_tokens": "INTEGER",
        "run_id": "VARCHAR",
    },
    ("conversation_id",),
    "One row per usable LLM conversation the optional verifier was asked about.",
)

# core/llm_checks.py fills these; declared here, where every column of a table is.
LLM_CHECK_COLUMNS = {
    "n_denied_present": "INTEGER",  # present categories an answer denies; null: no annotations
    "denied_present_objects": "VARCHAR[]",
    "example_overlap": "DOUBLE",  # highest share of a turn's 4-grams from the prompt's examples
    "example_copy": "BOOLEAN",
    "annotation_leak": "BOOLEAN",  # "mention", "caption", "bounding box", box numbers, ...
    "annotation_leak_terms": "VARCHAR[]",
    "n_repeated_questions": "INTEGER",
    "n_unjudged_claims": "INTEGER",  # attribute/action words no caption uses: not judged
    "unjudged_claims": "VARCHAR[]",
}

SCORE_COLUMNS = {
    # correctness (core/scored/metrics.py; docs/metrics.md)
    "format_valid": "BOOLEAN",
    "format_error": "VARCHAR",
    "n_turns": "INTEGER",
    "n_polar": "INTEGER",
    "n_polar_yes": "INTEGER",
    "n_polar_no": "INTEGER",
    "n_object_mentions": "INTEGER",
    "n_hallucinated": "INTEGER",
    "chair_i": "DOUBLE",
    "chair_s": "BOOLEAN",
    "hallucinated_objects": "VARCHAR[]",
    "n_negative_questions": "INTEGER",
    "n_negative_denied": "INTEGER",
    "negative_consistency": "DOUBLE",
    "n_counts": "INTEGER",
    "n_counts_correct": "INTEGER",
    "count_consistency": "DOUBLE",
    "region_category": "VARCHAR",
    "region_name_match": "BOOLEAN",
    # relation claims against the boxes and grammar by rule (core/scored/claims.py)
    "n_relation_claims": "INTEGER",  # judged left/right/above/below claims; null: no boxes
    "n_relations_contradicted": "INTEGER",  # claims the boxes say the reverse of
    "relation_consistency": "DOUBLE",  # supported / judged; null when none judged
    "relations_contradicted": "VARCHAR[]",  # "dog left of cat"
    "n_grammar_errors": "INTEGER",  # article, number agreement, Yes/No or Sure misfits
    "grammar_errors": "VARCHAR[]",  # "<code>: <words>"
    # complexity
    "mentioned_categories": "VARCHAR[]",
    "tags_per_conversation": "INTEGER",
    "reasoning_share": "DOUBLE",
    "answer_words_mean": "DOUBLE",
    "answer_words_min": "INTEGER",
    # diversity (exact and semantic duplicates; docs/metrics_embeddings.md)
    "norm_text_hash": "VARCHAR",
    "exact_duplicate_of": "VARCHAR",  # the first conversation with the same normalized text
    "cluster_id": "VARCHAR",  # near-duplicate cluster (smallest member id), within the source
    "cluster_size": "INTEGER",
    "nearest_id": "VARCHAR",
    "nearest_cosine": "DOUBLE",
    "novelty": "DOUBLE",
    # what the questions ask (core/task_kinds.py; docs/task_kinds.md); on imported rows that
    # carry no type, instruction_type is the inferred one and type_inferred is true
    "inferred_type": "VARCHAR",
    "type_inferred": "BOOLEAN",
    "task_kinds": "VARCHAR[]",  # one kind per question
    "primary_kind": "VARCHAR",
    # text filters a Data-Juicer user expects (core/text_quality.py; docs/metrics.md)
    "text_chars": "INTEGER",
    "text_words": "INTEGER",
    "word_rep_ratio": "DOUBLE",  # repeated word 10-grams / all, whole conversation
    "answer_rep_ratio": "DOUBLE",  # the same, highest over the answers
    "special_char_ratio": "DOUBLE",
    # MinHash near-copies (word 5-gram Jaccard), within the source, image and region
    "text_cluster_id": "VARCHAR",  # the group's first member in source order
    "text_cluster_size": "INTEGER",
    "text_dup_jaccard": "DOUBLE",
    # the image, from its header (raw__images); null for text-only rows
    "image_width": "INTEGER",
    "image_height": "INTEGER",
    "image_bytes": "BIGINT",
    # what small LLMs get wrong (core/llm_checks.py)
    **LLM_CHECK_COLUMNS,
    # the optional LLM verifier (generated__llm_verification); null when it did not judge
    "verified_share": "DOUBLE",  # answers it found supported / answers
    "verified_contradicted": "INTEGER",
    "verifier_model": "VARCHAR",
    "verifier_prompt_version": "VARCHAR",
    # relevance
    "relevance": "DOUBLE",  # answers vs the image's own captions (text embeddings)
    "image_text_score": "DOUBLE",  # optional image-text model; null when not configured
    "embed_model": "VARCHAR",
    "scored_run_id": "VARCHAR",
}


RAW_CONVERSATIONS = Table(
    "raw__conversations",
    dict(GENERATED_CONVERSATIONS.columns),
    ("conversation_id",),
    "One row per conversation imported from an existing instruction dataset (QC-only sources).",
    file_backed=True,
)

SCORED_CONVERSATIONS = Table(
    "scored__conversations",
    {**GENERATED_CONVERSATIONS.columns, **SCORE_COLUMNS},
    ("conversation_id",),
    "One row per generated conversation with every per-sample metric; nothing is dropped.",
    file_backed=True,
)

FINAL_DECISIONS = Table(
    "final__decisions",
    {
        "conversation_id": "VARCHAR",
        "source": "VARCHAR",
        "kept": "BOOLEAN",
        "first_failing_rule": "VARCHAR",  # the first rule (core/select.RULES order) it failed
        "failing_rules": "VARCHAR[]",  # every rule it failed
        "split": "VARCHAR",  # train | val; null when dropped
        "cluster_id": "VARCHAR",  # near-duplicate group across all sources
        "representative_id": "VARCHAR",
        "exact_representative_id": "VARCHAR",
        "run_id": "VARCHAR",
    },
    ("conversation_id",),
    "One row per scored conversation: kept or dropped, and every reason.",
    partitioned=False,
    file_backed=True,
)

FINAL_CONVERSATIONS = Table(
    "final__conversations",
    {**SCORED_CONVERSATIONS.columns, "split": "VARCHAR", "final_run_id": "VARCHAR"},
    ("conversation_id",),
    "One row per kept conversation with its split and every metric: what ships.",
    partitioned=False,
    file_backed=True,
)

FINAL_RUNS = Table(
    "final__runs",
    {
        "final_run_id": "VARCHAR",
        "report": "JSON",  # core/select.Selection.report: settings, drops, metrics before/after
        "held_back": "VARCHAR[]",  # sources kept out of the selection, with the reason
        "created_at": "TIMESTAMP",
    },
    ("final_run_id",),
    "One row per final-stage run: the selection report the export and card are built from.",
    partitioned=False,
)

FINAL_EXPORT_FILES = Table(
    "final__export_files",
    {
        "version": "VARCHAR",
        "format": "VARCHAR",  # llava | paper | parquet | manifest | card | ...
        "split": "VARCHAR",  # train | val | null for files covering both
        "path": "VARCHAR",
        "sha256": "VARCHAR",
        "run_id": "VARCHAR",
        "created_at": "TIMESTAMP",
    },
    ("version", "path"),
    "One row per exported file of every export version.",
    partitioned=False,
)

META_SOURCES = Table(
    "meta__sources",
    {
        "source": "VARCHAR",
        "root": "VARCHAR",  # absolute path of the COCO-layout directory
        "split": "VARCHAR",
        "kind": "VARCHAR",  # sample | coco | incoming | import
        "annotations_source": "VARCHAR",  # import sources: a COCO source annotating their images
        "registered_at": "TIMESTAMP",
    },
    ("source",),
    "One row per registered source (= partition key) and where its files are.",
    partitioned=False,
)

META_CHECK_RESULTS = Table(
    "meta__check_results",
    {
        "run_id": "VARCHAR",
        "check_name": "VARCHAR",
        "asset": "VARCHAR",
        "source": "VARCHAR",  # partition key, or '*' for checks over all sources
        "expectation_id": "VARCHAR",  # <frame>.<expectation type>(<column>)
        "frame": "VARCHAR",
        "expectation": "VARCHAR",
        "column_name": "VARCHAR",
        "success": "BOOLEAN",  # null when the expectation was not judged (figure undefined)
        "observed": "DOUBLE",  # the numeric observed value, when there is one
        "observed_text": "VARCHAR",
        "unexpected_count": "BIGINT",
        "element_count": "BIGINT",
        "evaluated_at": "TIMESTAMP",
        # ERROR: a failure blocks (a gate); WARN: a failure is reported and gates nothing
        "severity": "VARCHAR",
    },
    ("run_id", "check_name", "source", "expectation_id"),
    "One row per run, check, partition and expectation: the pass/fail history of every suite.",
    partitioned=False,
)

META_DATASET_METRICS = Table(
    "meta__dataset_metrics",
    {
        "run_id": "VARCHAR",
        "asset": "VARCHAR",
        "source": "VARCHAR",  # partition key, or '*' for the whole dataset
        "metric": "VARCHAR",
        "value": "DOUBLE",
        "recorded_at": "TIMESTAMP",
    },
    ("run_id", "asset", "source", "metric"),
    "One row per materialization and dataset-level metric: the metric history across runs.",
    partitioned=False,
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        RAW_IMAGES,
        RAW_CAPTIONS,
        RAW_OBJECTS,
        RAW_CATEGORIES,
        RAW_TAGS,
        RAW_REJECTS,
        RAW_CONVERSATIONS,
        GENERATED_CONVERSATIONS,
        GENERATED_LLM_REQUESTS,
        GENERATED_LLM_VERIFICATION,
        SCORED_CONVERSATIONS,
        FINAL_DECISIONS,
        FINAL_CONVERSATIONS,
        FINAL_RUNS,
        FINAL_EXPORT_FILES,
        META_SOURCES,
        META_CHECK_RESULTS,
        META_DATASET_METRICS,
    )
}
