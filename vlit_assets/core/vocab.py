"""The project's words: instruction types, roles, splits, reasons, stage, job and pool names.

One definition each; code, checks and docs import these instead of spelling the strings.
"""

from __future__ import annotations

# Stages, in order; each is a core package, a Dagster asset group and a table-name prefix.
STAGES = ("raw", "generated", "scored", "final")
SOURCE_STAGES = ("raw", "generated", "scored")  # per source (partitioned); final spans them all

INSTRUCTION_TYPES = ("global", "negative", "region")
UNLABELLED = "unlabelled"  # imported records that carry no instruction type; never guessed
GENERATORS = ("template", "llm", "import")

HUMAN, GPT = "human", "gpt"  # speakers of a turn (LLaVA's `from` values)
ROLES = (HUMAN, GPT)
IMAGE_TOKEN = "<image>"

TRAIN, VAL = "train", "val"

# Dagster names that code outside definitions.py needs (the CLI, the runner, the run guard).
SOURCE_JOB = "source_job"
FINAL_JOB = "final_job"
SOURCES = "sources"  # the dynamic partitions definition: one partition key per source
# DuckDB allows one writing process per file: every asset or check that writes holds this pool,
# whose limit is 1 in dagster.yaml, so parallel partition runs queue instead of failing on the lock.
WRITER_POOL = "duckdb_writer"
# One name per GX suite: the asset check, the GX suite, meta__check_results.check_name, the CLI.
RAW_SUITE = "raw_suite"
GENERATED_SUITE = "generated_suite"
SCORED_SUITE = "scored_suite"
FINAL_SUITE = "final_suite"

# Why a generated conversation is unusable (generated__conversations.drop_reason, null when it
# is usable); the specific part (which cause, which failure, what the renderer said) is in
# drop_detail, so counts per code stay few and stable.
DROP_REASONS = {
    "too_few_facts": "the annotations support fewer question/answer pairs than one needs",
    "region_render_failed": "the region image (the box drawn on the photo) could not be written",
    "llm_error": "the LLM request got no reply; the detail is the cause (timeout, connection, "
    "http_<status>, deadline, gave_up, budget_exhausted, ...)",
    "llm_parse": "the LLM reply is no usable conversation; the detail is a replies.FAILURES key",
}

# Why a record of a source was rejected at the raw stage (raw__rejects.reason).
REJECT_REASONS = {
    # images
    "image_missing": "the file named by the annotation does not exist",
    "image_empty": "the file has zero bytes",
    "image_undecodable": "Pillow cannot identify or decode the file",
    "image_truncated": "the file ends before the image data does",
    "image_decompression_bomb": "the pixel count exceeds the configured limit",
    "image_unsupported_mode": "the pixel mode cannot be converted to RGB for training",
    "image_duplicate_bytes": "the bytes equal those of an earlier image of the source",
    "image_path_escapes_root": "the path resolves outside the configured image root",
    "image_size_mismatch": "the annotated width/height differ from the decoded size",
    "image_duplicate_id": "the image id appears more than once in the annotation file",
    "image_without_captions": "no valid caption refers to the image",
    # annotations
    "annotation_unknown_image": "the annotation refers to an image id that is not declared",
    "annotation_unknown_category": "the annotation refers to a category id that is not declared",
    "annotation_duplicate_id": "the annotation id appears more than once",
    "category_duplicate_id": "the category id is declared more than once",
    "annotation_bad_field": "a required field is missing or has the wrong type",
    "bbox_nonpositive": "the box has zero or negative width or height",
    "bbox_outside_image": "the box extends past the image bounds",
    "caption_empty": "the caption is empty or whitespace",
    "parent_image_rejected": "the annotation belongs to an image that was rejected",
    # imported instruction data (core/formats/)
    "record_unparseable": "a JSONL line or record is not valid JSON",
    "conversation_empty": "the record has no conversation turns",
    "turn_unknown_speaker": "a turn's speaker is neither the user nor the assistant",
    "turns_not_alternating": "turns do not alternate user/assistant starting with the user",
    "turn_unanswered": "the last user turn has no answer",
    "turn_empty": "a turn's text is empty",
    "image_token_missing": "the first user turn lacks the image token",
    "image_token_misplaced": "an image token appears outside the first user turn, or twice",
    "instruction_type_unknown": "the record's instruction type is not one we know",
    "conversation_duplicate_id": "two records share an id and image",
    "text_invalid_unicode": "a text holds a lone UTF-16 surrogate, which UTF-8 cannot store",
    "turn_too_long": "a turn is longer than the configured maximum (characters)",
    "conversation_too_long": "a conversation is longer than the configured maximum (characters)",
    "file_not_a_dataset": "a JSON file of an import source is no instruction data (a sidecar)",
}
