"""Per-sample lineage: one conversation's way from source annotations to the exported file."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from vlit_assets.core.schemas import SCORE_COLUMNS
from vlit_assets.core.vocab import DROP_REASONS
from vlit_assets.core.warehouse import table_exists


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> dict[str, Any] | None:
    cursor = con.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def _all(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def lineage(con: duckdb.DuckDBPyConnection, conversation_id: str) -> dict[str, Any]:
    """Everything the warehouse knows about one conversation, stage by stage.

    Raises KeyError when no stage has the id. Later stages that have not run yet are absent
    from the result rather than guessed.
    """
    chain: dict[str, Any] = {"conversation_id": conversation_id}
    generated = (
        _one(
            con,
            "SELECT * FROM generated__conversations WHERE conversation_id = ?",
            [conversation_id],
        )
        if table_exists(con, "generated__conversations")
        else None
    )
    if generated is None:
        raise KeyError(f"no conversation {conversation_id!r} in generated__conversations")
    source, image_id = generated["source"], generated["image_id"]
    chain["source"] = _one(con, "SELECT * FROM meta__sources WHERE source = ?", [source])
    chain["image"] = _one(
        con, "SELECT * FROM raw__images WHERE image_id = ? AND source = ?", [image_id, source]
    )
    ids = list(generated.get("source_annotation_ids") or [])
    chain["annotations"] = {
        "captions": _all(
            con,
            "SELECT caption_id, caption FROM raw__captions WHERE list_contains(?, caption_id)",
            [ids],
        ),
        "objects": _all(
            con,
            "SELECT object_id, category_name, bbox_x, bbox_y, bbox_w, bbox_h, iscrowd "
            "FROM raw__objects WHERE list_contains(?, object_id)",
            [ids],
        ),
    }
    chain["generated"] = {k: v for k, v in generated.items() if k != "turns"}
    if generated.get("drop_reason"):
        chain["generated"]["drop_reason_means"] = DROP_REASONS.get(generated["drop_reason"])
    chain["turns"] = generated["turns"]
    # LLM rows: what the request cost on the wire, and the optional verifier's verdicts.
    for key, table in (("llm_request", "generated__llm_requests"),
                       ("verification", "generated__llm_verification")):  # fmt: skip
        if table_exists(con, table):
            row = _one(con, f'SELECT * FROM "{table}" WHERE conversation_id = ?', [conversation_id])
            if row is not None:
                chain[key] = row
    if table_exists(con, "scored__conversations"):
        scored = _one(
            con,
            "SELECT * FROM scored__conversations WHERE conversation_id = ?",
            [conversation_id],
        )
        if scored is not None:
            chain["scores"] = {k: scored[k] for k in SCORE_COLUMNS if k in scored}
    if table_exists(con, "final__decisions"):
        decision = _one(
            con, "SELECT * FROM final__decisions WHERE conversation_id = ?", [conversation_id]
        )
        if decision is not None:
            chain["decision"] = decision
            if decision.get("kept") and table_exists(con, "final__export_files"):
                chain["exported_in"] = _all(
                    con,
                    "SELECT version, format, path, sha256 FROM final__export_files "
                    "WHERE split = ? ORDER BY version DESC, format",
                    [decision.get("split")],
                )
    return chain


def render(chain: dict[str, Any]) -> str:
    """A plain-text view of a lineage chain, one stage per block."""
    lines = [f"conversation {chain['conversation_id']}"]

    def block(title: str, value: Any) -> None:
        lines.append(f"\n[{title}]")
        if isinstance(value, dict):
            for k, v in value.items():
                lines.append(f"  {k}: {json.dumps(v, default=str)}")
        elif isinstance(value, list):
            for item in value:
                lines.append(f"  - {json.dumps(item, default=str)}")
        else:
            lines.append(f"  {value}")

    for title in ("source", "image"):
        block(title, chain.get(title) or "not found")
    block("annotations used: captions", chain["annotations"]["captions"])
    block("annotations used: objects", chain["annotations"]["objects"])
    block("generated", chain["generated"])
    for key, title in (("llm_request", "llm request"), ("verification", "verification")):
        if key in chain:
            block(title, chain[key])
    block("turns", [f"{t['from']}: {t['value']}" for t in chain["turns"]])
    block("scores", chain.get("scores") or "not scored yet")
    block("decision", chain.get("decision") or "no final decision yet")
    if "exported_in" in chain:
        block("exported in", chain["exported_in"] or "not exported yet")
    return "\n".join(lines)
