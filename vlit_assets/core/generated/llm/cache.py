"""The LLM response cache: the ``llm__cache`` table and the rows stored in it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl

from vlit_assets.core.generated.llm.settings import (
    LLMRequest,
    LLMSettings,
    canonical_request,
    request_hash,
)

CACHE_TABLE = "llm__cache"
_CACHE_DDL = f"""
CREATE TABLE IF NOT EXISTS "{CACHE_TABLE}" (
    request_hash VARCHAR PRIMARY KEY,
    model VARCHAR,
    prompt_version VARCHAR,
    request JSON,
    response VARCHAR,
    finish_reason VARCHAR,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created_at TIMESTAMP
)"""
_CACHE_COLUMNS = (
    "request_hash",
    "model",
    "prompt_version",
    "request",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "created_at",
)


def cache_entry(
    request: LLMRequest,
    settings: LLMSettings,
    *,
    text: str,
    finish_reason: str | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """One ``llm__cache`` row for a completed request (the stored request has no key)."""
    return {
        "request_hash": request_hash(request, settings),
        "model": settings.model,
        "prompt_version": request.prompt_version,
        "request": canonical_request(request, settings),
        "response": text,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }


@dataclass(frozen=True)
class CachedResponse:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


Opener = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


class RequestCache:
    """Completed requests in the DuckDB table ``llm__cache``, keyed by ``request_hash``.

    Built on an open connection, or on an ``opener`` (a function returning a context manager
    that yields a connection) so that every read and write holds the database only for its
    own short transaction: a run waiting on a slow model then never holds the write lock.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection | None = None, *, opener: Opener | None = None
    ) -> None:
        if (con is None) == (opener is None):
            raise ValueError("RequestCache needs exactly one of a connection or an opener")
        self.con = con
        self._opener = opener
        self._writer: duckdb.DuckDBPyConnection | None = None
        with self._connection() as c:
            c.execute(_CACHE_DDL)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._opener is not None:
            with self._opener() as con:
                yield con
        else:
            assert self.con is not None
            yield self.con

    def get_many(self, hashes: Iterable[str]) -> dict[str, CachedResponse]:
        """All cached responses among ``hashes`` in one query."""
        keys = pl.DataFrame(
            {"request_hash": list(dict.fromkeys(hashes))}, schema={"request_hash": pl.String}
        )
        if keys.height == 0:
            return {}
        with self._connection() as con:
            con.register("_llm_cache_keys", keys)
            try:
                rows = con.execute(
                    f"""SELECT c.request_hash, c.response, c.finish_reason, c.prompt_tokens,
                               c.completion_tokens
                        FROM "{CACHE_TABLE}" c JOIN _llm_cache_keys k USING (request_hash)"""
                ).fetchall()
            finally:
                con.unregister("_llm_cache_keys")
        return {r[0]: CachedResponse(r[1], r[2], r[3] or 0, r[4] or 0) for r in rows}

    def put_many(self, entries: list[dict[str, Any]]) -> None:
        """Insert completed requests in one statement (one transaction); duplicates are kept
        as first written."""
        if not entries:
            return
        frame = pl.DataFrame(
            [[e[c] for c in _CACHE_COLUMNS] for e in entries],
            schema={
                "request_hash": pl.String,
                "model": pl.String,
                "prompt_version": pl.String,
                "request": pl.String,
                "response": pl.String,
                "finish_reason": pl.String,
                "prompt_tokens": pl.Int32,
                "completion_tokens": pl.Int32,
                "created_at": pl.Datetime("us"),
            },
            orient="row",
        )
        if self._opener is not None:
            with self._opener() as con:
                self._insert(con, frame)
            return
        if self._writer is None:
            # A cursor of its own, so writes may run in a worker thread.
            assert self.con is not None
            self._writer = self.con.cursor()
        self._insert(self._writer, frame)

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> None:
        con.register("_llm_cache_new", frame)
        try:
            cols = ", ".join(_CACHE_COLUMNS)
            con.execute(
                f'INSERT OR IGNORE INTO "{CACHE_TABLE}" ({cols}) SELECT {cols} FROM _llm_cache_new'
            )
        finally:
            con.unregister("_llm_cache_new")

    def __len__(self) -> int:
        with self._connection() as con:
            row = con.execute(f'SELECT count(*) FROM "{CACHE_TABLE}"').fetchone()
        return int(row[0]) if row else 0
