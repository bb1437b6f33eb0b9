"""Optional verification pass: an LLM judges each answer of an LLM conversation against the
image's annotations (captions, boxes, tags).

One request per usable LLM conversation, cached and budgeted like every request (key
``verify:<conversation_id>``); the verdicts become ``generated__llm_verification`` rows with
the verifier's model and prompt version. Off unless the generated stage is told to run it.
"""

from __future__ import annotations

import polars as pl

from vlit_assets.core.generated.llm.settings import LLMRequest, LLMResult
from vlit_assets.core.generated.prompts import VERIFY_PROMPT_VERSION, build_verify_messages
from vlit_assets.core.generated.replies import parse_verdicts
from vlit_assets.core.generated.self_instruct import GENERATOR, MAX_PROMPT_OBJECTS, load_images
from vlit_assets.core.schemas import GENERATED_LLM_VERIFICATION

VERIFY_SCHEMA = GENERATED_LLM_VERIFICATION.polars_schema
# The verdict is a judgement, not a sample: ask for the most likely one.
VERIFY_PARAMS = {"temperature": 0.0}


def plan_verification(
    rows: pl.DataFrame,
    images: pl.DataFrame,
    captions: pl.DataFrame,
    objects: pl.DataFrame,
    tags: pl.DataFrame,
) -> list[LLMRequest]:
    """One request per usable LLM row of ``rows`` (generated__conversations columns)."""
    usable = rows.filter((pl.col("generator") == GENERATOR) & pl.col("drop_reason").is_null())
    if usable.is_empty():
        return []
    wanted = set(usable["image_id"])
    by_id = {img.image_id: img for img in load_images(
        images.filter(pl.col("image_id").is_in(list(wanted))), captions, objects, tags
    )}  # fmt: skip
    plan = []
    for row in usable.iter_rows(named=True):
        img = by_id.get(row["image_id"])
        if img is None:
            raise ValueError(
                f"conversation {row['conversation_id']}: image {row['image_id']} is not among "
                "the raw images given"
            )
        shown = sorted(img.objects, key=lambda o: -o.area_frac)[:MAX_PROMPT_OBJECTS]
        region = next((o for o in img.objects if o.object_id == row["region_object_id"]), None)
        if region is not None and region not in shown:
            shown.append(region)
        messages = build_verify_messages(
            row["turns"],
            captions=[text for _, text in img.captions],
            objects=[o.prompt() for o in shown],
            present=img.present,
            absent=img.absent,
            region=region.prompt() if region is not None else None,
        )
        n_answers = sum(t["from"] == "gpt" for t in row["turns"])
        meta = {"conversation_id": row["conversation_id"], "source": row["source"],
                "n_answers": n_answers}  # fmt: skip
        plan.append(
            LLMRequest(
                f"verify:{row['conversation_id']}",
                messages,
                VERIFY_PROMPT_VERSION,
                VERIFY_PARAMS,
                meta,
            )
        )
    return plan


def verification_rows(
    plan: list[LLMRequest], results: list[LLMResult], *, model: str, run_id: str
) -> pl.DataFrame:
    """One ``generated__llm_verification`` row per planned request, failures included."""
    by_key = {r.key: r for r in results}
    records = []
    for request in plan:
        result = by_key[request.key]
        n = int(request.meta["n_answers"])
        verdicts: list[str] | None = None
        error = None
        if result.error is not None:
            error = f"llm_error:{result.error}"
        else:
            parsed = parse_verdicts(result.text, n, finish_reason=result.finish_reason)
            if parsed.ok:
                verdicts = parsed.verdicts
            else:
                error = f"llm_parse:{parsed.failure}"
        counts = {v: (verdicts or []).count(v) for v in ("supported", "contradicted", "unknown")}
        records.append(
            {
                "conversation_id": request.meta["conversation_id"],
                "source": request.meta["source"],
                "verifier_model": model,
                "verifier_prompt_version": request.prompt_version,
                "request_hash": result.request_hash,
                "n_answers": n,
                "verified_supported": counts["supported"] if verdicts else None,
                "verified_contradicted": counts["contradicted"] if verdicts else None,
                "verified_unknown": counts["unknown"] if verdicts else None,
                "verified_share": counts["supported"] / n if verdicts and n else None,
                "verdicts": verdicts,
                "error": error,
                "cache_hit": result.cache_hit,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "run_id": run_id,
            }
        )
    if not records:
        return pl.DataFrame(schema=VERIFY_SCHEMA)
    return pl.DataFrame(records, schema=VERIFY_SCHEMA, orient="row")
