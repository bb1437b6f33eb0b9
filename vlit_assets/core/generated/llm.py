"""OpenAI-compatible chat client: adaptive concurrency, retries, a DuckDB cache, budgets.

Retries live here and only here (the ``openai`` client's own retries are switched off), so one
place decides what is retried, how long to wait and what the last cause was. Every completed
request is written to ``llm__cache`` before it is reported, so an interrupted run resumes
without paying twice for anything it had already received.

A server that answers one request at a time (llama.cpp on a laptop) queues whatever else is
sent. Two rules keep such a server from turning into a retry storm:

- The number of requests in flight adapts (AIMD): it starts at one, grows while latency stays
  near the best seen, and halves when latency doubles (requests are queueing) or on a timeout,
  429 or 503. ``LLMSettings.adaptive=False`` keeps it fixed at ``concurrency``.
- ``timeout_s`` counts from the later of the attempt's send and the server's last completed
  reply, so a request queued behind others that are being answered does not time out and is
  never sent twice; a request sent behind ``n`` others waits at most ``(n + 1) * timeout_s``.

A whole-stage ``deadline_s`` bounds the run, and after ``give_up_after`` failed attempts in a
row with no success between them the client stops sending (the endpoint is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import duckdb
import httpx
import openai
import polars as pl

from vlit_assets.core.ids import text_hash

log = logging.getLogger(__name__)

# USD per million tokens (prompt, completion). Extend it for the models a deployment uses, or
# pass explicit prices in LLMSettings; a model without a price cannot run under a cost budget.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}

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

# 408 and 409 are the server saying "try again"; every other 4xx means the request is wrong.
_RETRYABLE_4XX = frozenset({408, 409, 429})
# Set by the client itself; streaming or several choices would change what a reply is.
_RESERVED_PARAMS = frozenset({"model", "messages", "stream", "n"})


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to call the model. The API key never appears in repr, str or public_dict."""

    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    concurrency: int = 16  # requests in flight: the ceiling when adaptive, else fixed
    adaptive: bool = True  # find what the server takes, from 1 up to `concurrency`
    timeout_s: float = 60.0  # per attempt, from the later of send and the last reply received
    max_retries: int = 4
    deadline_s: float | None = None  # whole run; what is not done by then fails as `deadline`
    give_up_after: int = 12  # failed attempts in a row (no success between) that stop the run
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    temperature: float = 0.7
    max_tokens: int = 1024
    price_per_mtok_prompt: float | None = None
    price_per_mtok_completion: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"LLMSettings.concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"LLMSettings.max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"LLMSettings.timeout_s must be > 0, got {self.timeout_s}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"LLMSettings.deadline_s must be > 0 or None, got {self.deadline_s}")
        if self.give_up_after < 1:
            raise ValueError(f"LLMSettings.give_up_after must be >= 1, got {self.give_up_after}")
        listed = PRICES.get(self.model)
        if listed is not None:
            if self.price_per_mtok_prompt is None:
                object.__setattr__(self, "price_per_mtok_prompt", listed[0])
            if self.price_per_mtok_completion is None:
                object.__setattr__(self, "price_per_mtok_completion", listed[1])

    @property
    def price_known(self) -> bool:
        return self.price_per_mtok_prompt is not None and self.price_per_mtok_completion is not None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one response; 0.0 when no price is known (see ``price_known``)."""
        if not self.price_known:
            return 0.0
        return (
            prompt_tokens * (self.price_per_mtok_prompt or 0.0)
            + completion_tokens * (self.price_per_mtok_completion or 0.0)
        ) / 1e6

    def public_dict(self) -> dict[str, Any]:
        """Settings fit for metadata and logs: everything but the key."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}


@dataclass
class Budget:
    """Limits for one or more runs; the counters keep what was spent (cache hits are free).

    Requests are charged when first sent, tokens and cost when a response arrives, so requests
    already in flight when a limit is reached may overshoot it by up to ``concurrency - 1``.
    """

    max_requests: int | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0

    def exhausted(self) -> str | None:
        """Which limit is reached, or None."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            return f"requests {self.requests} >= {self.max_requests}"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"tokens {self.tokens} >= {self.max_tokens}"
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            return f"cost {self.cost_usd:.6f} >= {self.max_cost_usd} USD"
        return None


@dataclass(frozen=True)
class LLMRequest:
    """One chat request. ``params`` are sampling parameters sent in the body and part of the
    cache key (they override the settings' temperature and max_tokens); ``meta`` is the
    caller's bookkeeping and is neither sent nor hashed."""

    key: str
    messages: list[dict]
    prompt_version: str
    params: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        reserved = sorted(_RESERVED_PARAMS & set(self.params))
        if reserved:
            raise ValueError(f"LLMRequest {self.key!r}: params may not set {reserved}")
        if not self.messages:
            raise ValueError(f"LLMRequest {self.key!r}: messages are empty")


@dataclass(frozen=True)
class LLMResult:
    """What became of one request: a reply (possibly from the cache) or an error code."""

    key: str
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float  # from first send to the final answer, retries and waits included
    cache_hit: bool
    attempts: int
    # budget_exhausted | deadline | gave_up | timeout | connection | http_<status> | bad_response
    error: str | None
    error_detail: str | None = None
    finish_reason: str | None = None
    request_hash: str = ""
    wait_ms: float = 0.0  # backoff and waiting for a free slot between attempts


def effective_params(request: LLMRequest, settings: LLMSettings) -> dict[str, Any]:
    return {"temperature": settings.temperature, "max_tokens": settings.max_tokens} | dict(
        request.params
    )


def _canonical(request: LLMRequest, settings: LLMSettings) -> str:
    payload = {
        "model": settings.model,
        "prompt_version": request.prompt_version,
        "messages": request.messages,
        "params": effective_params(request, settings),
    }
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_hash(request: LLMRequest, settings: LLMSettings) -> str:
    """Cache key: model, prompt version, messages and sampling parameters (never the key)."""
    return text_hash(_canonical(request, settings))


# ---------------------------------------------------------------------------------------------
# Cache


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
        "request": _canonical(request, settings),
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


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True)
class _Failure:
    cause: str
    detail: str
    retryable: bool
    retry_after_s: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _classify(exc: BaseException) -> _Failure:
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return _Failure("timeout", "no answer within timeout_s", True)
    if isinstance(exc, openai.APIConnectionError):
        return _Failure("connection", type(exc.__cause__ or exc).__name__, True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in _RETRYABLE_4XX or status >= 500
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        return _Failure(f"http_{status}", str(exc.message)[:300], retryable, retry_after)
    return _Failure("bad_response", f"{type(exc).__name__}: {str(exc)[:300]}", False)


def backoff_delay(attempt: int, settings: LLMSettings, retry_after_s: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    A server's Retry-After wins (capped at backoff_max_s); otherwise full jitter, so many
    clients that failed together do not come back together.
    """
    if retry_after_s is not None:
        return min(retry_after_s, settings.backoff_max_s)
    ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(0.0, ceiling)


_OVERLOAD = frozenset({"timeout", "connection", "http_429", "http_503"})
# Latency is compared per completion token, plus this many tokens' worth for the prompt and
# the first token, so that long and short replies are comparable.
_TOKEN_OFFSET = 32
# A reply within _GROW_BELOW (or a quarter of the requests in flight) times the best latency
# seen: the server keeps up, so the limit grows. At _CUT_ABOVE (or half the requests in
# flight) times the best: requests wait behind each other the way they do on a server that
# answers one or two at a time, so the limit halves. Between the two it holds. Scaling with
# the requests in flight keeps noise and a busy client (slower across the board) from being
# read as queueing on a server that runs many requests at once; a server that queues more
# than that costs nothing but latency, since a queued request does not time out.
_GROW_BELOW = 1.3
_CUT_ABOVE = 1.7


class ConcurrencyLimit:
    """How many requests may be in flight: AIMD on latency and overload signals.

    Starts at 1 (or fixed at ``maximum`` when not adaptive). While replies come back about as
    fast as the best seen, the limit grows (by one per reply until the first cut, then by one
    per two replies). When two replies in a row take markedly longer (see ``_CUT_ABOVE``) the
    limit halves, but not below 2; when an attempt times out or gets 429/503/no connection it
    halves down to 1. At most one cut per round trip: only requests sent after the last cut
    can cut again.
    """

    def __init__(self, maximum: int, adaptive: bool) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.limit = 1.0 if adaptive else float(maximum)
        self.in_flight = 0
        self.peak = 0
        self.lowest = self.highest = int(self.limit)
        self._slow_start = True
        self._slow_in_row = 0
        self._best: float | None = None
        self._last_cut = -math.inf
        self._changed = asyncio.Event()

    @property
    def allowed(self) -> int:
        return max(1, min(self.maximum, int(self.limit)))

    async def acquire(self, deadline: float | None) -> bool:
        """Wait for a free slot and take it; False if ``deadline`` (monotonic) passes first."""
        while self.in_flight >= self.allowed:
            self._changed.clear()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def release(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    def on_success(
        self, sent_at: float, latency_s: float, completion_tokens: int, in_flight: int = 1
    ) -> None:
        """One reply: ``in_flight`` requests were out (this one included) when it was sent."""
        if not self.adaptive:
            return
        per_token = latency_s / (max(completion_tokens, 0) + _TOKEN_OFFSET)
        if self._best is None or per_token < self._best:
            self._best = per_token
        ratio = per_token / self._best if self._best > 0 else 1.0
        if ratio >= max(_CUT_ABOVE, in_flight / 2):
            # Two slow replies in a row: one alone is as likely a hiccup as a queue.
            self._slow_in_row += 1
            if self._slow_in_row >= 2:
                # Not below 2: one request waiting while one is answered keeps a one-slot
                # server busy without a gap, and a waiting request does not time out.
                self._cut(sent_at, floor=2.0)
        else:
            self._slow_in_row = 0
            if ratio <= max(_GROW_BELOW, in_flight / 4):
                self.limit += 1.0 if self._slow_start else 0.5
                self.limit = min(self.limit, float(self.maximum))
        self._note()

    def on_overload(self, sent_at: float) -> None:
        if self.adaptive:
            self._cut(sent_at, floor=1.0)
            self._note()

    def _cut(self, sent_at: float, *, floor: float) -> None:
        if sent_at <= self._last_cut:
            return  # sent before the last cut: its delay is already accounted for
        self._slow_in_row = 0
        self._slow_start = False
        self.limit = max(min(floor, self.limit), self.limit / 2)
        self._last_cut = time.monotonic()

    def _note(self) -> None:
        self.lowest = min(self.lowest, self.allowed)
        self.highest = max(self.highest, self.allowed)
        self._changed.set()


@dataclass
class RunStats:
    """What one ``run_requests`` call did on the wire; filled in as it goes."""

    planned: int = 0
    cache_hits: int = 0
    sent: int = 0  # requests that made at least one attempt
    attempts: int = 0
    retries: int = 0  # attempts beyond each request's first
    failed_attempts: Counter[str] = field(default_factory=Counter)  # by cause
    wait_s: float = 0.0  # backoff between attempts, summed over requests
    concurrency_final: int = 0
    concurrency_low: int = 0
    concurrency_high: int = 0
    peak_in_flight: int = 0
    stopped: str | None = None  # deadline / gave_up / budget reason, when the run stopped early
    elapsed_s: float = 0.0

    def public_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["failed_attempts"] = dict(sorted(self.failed_attempts.items()))
        return out


class _Stop(Exception):
    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(detail)
        self.cause = cause
        self.detail = detail


class _Run:
    """State of one ``run_requests`` call: client, limit, budget, write-behind queue, stats."""

    def __init__(
        self,
        settings: LLMSettings,
        cache: RequestCache | None,
        budget: Budget,
        on_result: Callable[[LLMResult], None] | None,
        stats: RunStats,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.budget = budget
        self.on_result = on_result
        self.stats = stats
        self.failure: Exception | None = None  # of the writer or the callback
        self.queue: asyncio.Queue[tuple[LLMResult, dict[str, Any] | None] | None] = asyncio.Queue()
        self.limit = ConcurrencyLimit(settings.concurrency, settings.adaptive)
        self.started = time.monotonic()
        self.deadline = None if settings.deadline_s is None else self.started + settings.deadline_s
        self.last_reply = -math.inf  # monotonic time of the last successful reply
        self.failed_in_row = 0
        self.gave_up: str | None = None
        # The client waits forever once connected; the progress-aware timeout below decides.
        self.client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key or "unused",
            max_retries=0,
            timeout=httpx.Timeout(None, connect=settings.timeout_s),
        )

    def stop_reason(self) -> _Stop | None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return _Stop("deadline", f"stage deadline of {self.settings.deadline_s:g} s passed")
        if self.gave_up is not None:
            return _Stop("gave_up", self.gave_up)
        return None

    async def process(self, request: LLMRequest, rhash: str, has_slot: bool) -> LLMResult:
        """Send one request unless the budget is spent, account for it, queue it for writing."""
        reason = self.budget.exhausted()
        if reason is not None:
            if has_slot:
                self.limit.release()
            result = _budget_result(request, rhash, reason)
            self.queue.put_nowait((result, None))
            return result
        self.budget.requests += 1
        result = await self.send(request, rhash, has_slot)
        self.budget.tokens += result.prompt_tokens + result.completion_tokens
        self.budget.cost_usd += result.cost_usd
        entry = None
        if result.error is None:
            entry = cache_entry(
                request,
                self.settings,
                text=result.text or "",
                finish_reason=result.finish_reason,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )
        self.queue.put_nowait((result, entry))
        return result

    async def send(self, request: LLMRequest, rhash: str, has_slot: bool) -> LLMResult:
        settings = self.settings
        # The typed create() re-walks every message against its TypedDicts and builds pydantic
        # models of the reply: more CPU than the HTTP exchange itself, and the client's CPU is
        # what caps throughput at high concurrency. Messages are plain JSON already.
        body = {"model": settings.model, "messages": request.messages} | effective_params(
            request, settings
        )
        started = time.perf_counter()
        failure: _Failure | None = None
        attempts = 0
        waited = 0.0
        for attempt in range(1, settings.max_retries + 2):
            if not has_slot:
                slot_wait = time.perf_counter()
                if not await self.limit.acquire(self.deadline):
                    failure = _Failure("deadline", "stage deadline passed before a slot", False)
                    break
                waited += time.perf_counter() - slot_wait
            stop = self.stop_reason()
            if stop is not None:
                self.limit.release()
                failure = _Failure(stop.cause, stop.detail, False)
                break
            attempts = attempt
            self.stats.attempts += 1
            if attempt == 1:
                self.stats.sent += 1
            else:
                self.stats.retries += 1
            sent_at = time.monotonic()
            ahead = self.limit.in_flight  # this one included
            try:
                payload = await self._attempt(body, sent_at, ahead)
            except _Stop as exc:
                failure = _Failure(exc.cause, exc.detail, False)
            except (TimeoutError, openai.APIError, ValueError) as exc:
                failure = _classify(exc)
            else:
                self.limit.release()
                result = self._success(request, rhash, payload, attempt, started, waited)
                self.last_reply = time.monotonic()
                self.failed_in_row = 0
                if result.error is None:
                    self.limit.on_success(
                        sent_at, self.last_reply - sent_at, result.completion_tokens, ahead
                    )
                return result
            finally:
                has_slot = False
            if failure.cause not in ("deadline", "gave_up"):
                self.limit.release()
            self.stats.failed_attempts[failure.cause] += 1
            if failure.cause in _OVERLOAD:
                self.limit.on_overload(sent_at)
            if failure.retryable:
                self.failed_in_row += 1
                if self.failed_in_row >= settings.give_up_after and self.gave_up is None:
                    self.gave_up = (
                        f"{self.failed_in_row} attempts in a row failed (last: {failure.cause}); "
                        "the endpoint looks down, so nothing more is sent"
                    )
            if not failure.retryable or attempt > settings.max_retries:
                break
            delay = backoff_delay(attempt, settings, failure.retry_after_s)
            log.debug("llm retry key=%s cause=%s wait=%.3fs", request.key, failure.cause, delay)
            waited += delay
            self.stats.wait_s += delay
            await asyncio.sleep(delay)
        assert failure is not None
        return LLMResult(
            key=request.key,
            text=None,
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            latency_ms=(time.perf_counter() - started) * 1000,
            cache_hit=False,
            attempts=attempts,
            error=failure.cause,
            error_detail=failure.detail,
            request_hash=rhash,
            wait_ms=waited * 1000,
        )

    async def _attempt(self, body: dict[str, Any], sent_at: float, ahead: int) -> Any:
        """One POST, timed out only when the server made no progress for ``timeout_s``.

        The clock restarts whenever another reply arrives (the server is working through its
        queue), up to ``ahead * timeout_s`` in all. The stage deadline ends it as ``deadline``
        (and frees its slot here, since the caller then neither retries nor releases).
        """
        timeout_s = self.settings.timeout_s
        task = asyncio.ensure_future(
            self.client.post("/chat/completions", cast_to=bytes, body=body)
        )
        try:
            while True:
                now = time.monotonic()
                until = min(max(sent_at, self.last_reply) + timeout_s, sent_at + ahead * timeout_s)
                stage_end = self.deadline if self.deadline is not None else math.inf
                wait = min(until, stage_end) - now
                if wait <= 0:
                    if stage_end <= until:
                        self.limit.release()
                        raise _Stop("deadline", "stage deadline passed during the request")
                    raise TimeoutError
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return json.loads(task.result())
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def _success(
        self,
        request: LLMRequest,
        rhash: str,
        payload: Any,
        attempts: int,
        started: float,
        waited: float,
    ) -> LLMResult:
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
            usage = payload.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            return LLMResult(
                request.key, None, 0, 0, 0.0, latency_ms, False, attempts, "bad_response",
                f"not a chat completion: {type(exc).__name__} {exc}", request_hash=rhash,
                wait_ms=waited * 1000,
            )  # fmt: skip
        return LLMResult(
            key=request.key,
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self.settings.cost_usd(prompt_tokens, completion_tokens),
            latency_ms=latency_ms,
            cache_hit=False,
            attempts=attempts,
            error=None,
            finish_reason=choice.get("finish_reason"),
            request_hash=rhash,
            wait_ms=waited * 1000,
        )

    async def write_behind(self) -> None:
        """Persist completions in small batches (whatever queued up meanwhile), then report them.

        ``on_result`` sees a result only once it is in the cache, so whatever a caller has
        been told about survives a crash. If writing or the callback fails, no new requests
        are sent, completions still in flight are still written, and the first error is
        raised once the queue is drained.
        """
        done = False
        while not done:
            batch, done = await self._next_batch()
            entries = [entry for _, entry in batch if entry is not None]
            try:
                if entries and self.cache is not None:
                    await asyncio.to_thread(self.cache.put_many, entries)
                if self.failure is None:
                    for result, _ in batch:
                        self.report(result)
            except Exception as exc:
                self.failure = self.failure or exc
        if self.failure is not None:
            raise self.failure

    async def _next_batch(self) -> tuple[list[tuple[LLMResult, dict[str, Any] | None]], bool]:
        item = await self.queue.get()
        done = item is None
        batch = [] if item is None else [item]
        while not done and not self.queue.empty():
            item = self.queue.get_nowait()
            done = item is None
            if item is not None:
                batch.append(item)
        return batch, done

    def report(self, result: LLMResult) -> None:
        if self.on_result is not None:
            self.on_result(result)


def _cached_result(request: LLMRequest, rhash: str, hit: CachedResponse) -> LLMResult:
    return LLMResult(
        key=request.key,
        text=hit.text,
        prompt_tokens=hit.prompt_tokens,
        completion_tokens=hit.completion_tokens,
        cost_usd=0.0,
        latency_ms=0.0,
        cache_hit=True,
        attempts=0,
        error=None,
        finish_reason=hit.finish_reason,
        request_hash=rhash,
    )


def _budget_result(request: LLMRequest, rhash: str, reason: str) -> LLMResult:
    return LLMResult(
        request.key, None, 0, 0, 0.0, 0.0, False, 0, "budget_exhausted", reason,
        request_hash=rhash,
    )  # fmt: skip


def _unsent_result(request: LLMRequest, rhash: str, stop: _Stop) -> LLMResult:
    return LLMResult(
        request.key, None, 0, 0, 0.0, 0.0, False, 0, stop.cause, stop.detail,
        request_hash=rhash,
    )  # fmt: skip


def _check_unique(requests: list[LLMRequest]) -> None:
    seen: set[str] = set()
    for r in requests:
        if r.key in seen:
            raise ValueError(f"LLMRequest.key {r.key!r} appears more than once in one run")
        seen.add(r.key)


async def run_requests(
    requests: Iterable[LLMRequest],
    settings: LLMSettings,
    *,
    cache: RequestCache | None,
    budget: Budget | None = None,
    on_result: Callable[[LLMResult], None] | None = None,
    stats: RunStats | None = None,
) -> list[LLMResult]:
    """Results in the order of ``requests``: cached ones at once, the rest sent concurrently.

    Requests that hash alike are sent once and share the answer (the later ones as cache hits).
    When the budget runs out, nothing more is sent: in-flight requests finish and are kept, the
    rest come back with ``error="budget_exhausted"``; past the stage deadline or once the
    endpoint looks down, with ``"deadline"`` or ``"gave_up"``. Errors are results, never
    exceptions. ``stats``, when given, is filled with what happened on the wire.
    """
    reqs = list(requests)
    _check_unique(reqs)
    budget = budget if budget is not None else Budget()
    stats = stats if stats is not None else RunStats()
    if budget.max_cost_usd is not None and not settings.price_known:
        raise ValueError(
            f"a cost budget needs a price for model {settings.model!r}: add it to llm.PRICES "
            "or set LLMSettings.price_per_mtok_prompt/_completion"
        )
    hashes = [request_hash(r, settings) for r in reqs]
    hits = cache.get_many(hashes) if cache is not None else {}
    run = _Run(settings, cache, budget, on_result, stats)
    stats.planned = len(reqs)
    results: list[LLMResult | None] = [None] * len(reqs)
    leader: dict[str, int] = {}
    followers: list[int] = []
    pending: deque[int] = deque()
    for i, (request, rhash) in enumerate(zip(reqs, hashes, strict=True)):
        if rhash in hits:
            results[i] = _cached_result(request, rhash, hits[rhash])
            run.report(results[i])
        elif rhash in leader:
            followers.append(i)
        else:
            leader[rhash] = i
            pending.append(i)
    try:
        await _send_pending(run, pending, reqs, hashes, results)
    finally:
        stats.elapsed_s = time.monotonic() - run.started
        stats.concurrency_final = run.limit.allowed
        stats.concurrency_low = run.limit.lowest
        stats.concurrency_high = run.limit.highest
        stats.peak_in_flight = run.limit.peak
    for i in followers:
        first = results[leader[hashes[i]]]
        assert first is not None
        results[i] = _follower(first, reqs[i].key)
        run.report(results[i])
    done = [r for r in results if r is not None]
    stats.cache_hits = sum(r.cache_hit for r in done)
    stop = run.stop_reason()
    stats.stopped = stop.detail if stop is not None else budget.exhausted()
    _log_summary(done, budget, stats)
    return done


async def _send_pending(
    run: _Run,
    pending: deque[int],
    reqs: list[LLMRequest],
    hashes: list[str],
    results: list[LLMResult | None],
) -> None:
    """Start requests in order as the concurrency limit allows; the writer persists results."""

    async def one(i: int) -> None:
        results[i] = await run.process(reqs[i], hashes[i], has_slot=True)

    writer = asyncio.create_task(run.write_behind())
    try:
        async with asyncio.TaskGroup() as group:
            while pending and run.failure is None:
                stop = run.stop_reason()
                if stop is None and not await run.limit.acquire(run.deadline):
                    stop = run.stop_reason()
                if stop is not None:
                    for i in pending:
                        results[i] = _unsent_result(reqs[i], hashes[i], stop)
                        run.queue.put_nowait((results[i], None))
                    pending.clear()
                    break
                group.create_task(one(pending.popleft()))
    finally:
        # Also on cancellation: what completed is still written before we give up.
        run.queue.put_nowait(None)
        try:
            await writer
        finally:
            with contextlib.suppress(Exception):
                await run.client.close()


def _follower(first: LLMResult, key: str) -> LLMResult:
    if first.error is not None:
        return LLMResult(**{**first.__dict__, "key": key})
    return LLMResult(**{**first.__dict__, "key": key, "cache_hit": True, "cost_usd": 0.0})


def _log_summary(results: list[LLMResult], budget: Budget, stats: RunStats) -> None:
    errors: dict[str, int] = {}
    for r in results:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    log.info(
        "llm run: %d results, %d cache hits, %d errors %s; %d attempts for %d requests sent "
        "(%d retries, failed attempts %s), concurrency %d-%d; budget spent: %d requests, "
        "%d tokens, %.6f USD",
        len(results),
        stats.cache_hits,
        sum(errors.values()),
        errors,
        stats.attempts,
        stats.sent,
        stats.retries,
        dict(stats.failed_attempts),
        stats.concurrency_low,
        stats.concurrency_high,
        budget.requests,
        budget.tokens,
        budget.cost_usd,
    )


def run_requests_sync(
    requests: Iterable[LLMRequest],
    settings: LLMSettings,
    *,
    cache: RequestCache | None,
    budget: Budget | None = None,
    on_result: Callable[[LLMResult], None] | None = None,
    stats: RunStats | None = None,
) -> list[LLMResult]:
    """``run_requests`` for synchronous callers such as Dagster assets.

    Inside a thread that already runs an event loop (a notebook, an async framework) the run
    gets its own loop in a worker thread, since a running loop cannot be re-entered.
    """

    def go() -> list[LLMResult]:
        return asyncio.run(
            run_requests(
                requests, settings, cache=cache, budget=budget, on_result=on_result, stats=stats
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return go()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-run") as pool:
        return pool.submit(go).result()


class ProgressLine:
    """An ``on_result`` callback that reports progress as one line every ``every_s`` seconds.

    The line says done/total, rate, ETA, cache hits and errors by kind, e.g.
    ``llm 12/24 (50%), 1.9/s, ETA 0:06, cache hits 3, errors timeout=1``. It is handed to
    ``emit`` (a logger's info, print): nothing is emitted for a run shorter than ``every_s``
    except the closing line from ``finish``.
    """

    def __init__(self, total: int, emit: Callable[[str], None], *, every_s: float = 5.0) -> None:
        self.total = total
        self.emit = emit
        self.every_s = every_s
        self.done = 0
        self.cache_hits = 0
        self.errors: Counter[str] = Counter()
        self.started = time.monotonic()
        self._last = self.started
        self.lines = 0

    def __call__(self, result: LLMResult) -> None:
        self.done += 1
        self.cache_hits += result.cache_hit
        if result.error:
            self.errors[result.error] += 1
        now = time.monotonic()
        if now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            self._emit(now)

    def finish(self) -> None:
        now = time.monotonic()
        if now - self.started >= self.every_s or self.lines:
            self._emit(now)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        fresh = self.done - self.cache_hits
        rate = fresh / elapsed
        left = self.total - self.done
        eta = "?" if rate <= 0 else _clock(left / rate)
        pct = 100 * self.done / self.total if self.total else 100.0
        parts = [f"llm {self.done}/{self.total} ({pct:.0f}%)", f"{rate:.2f}/s", f"ETA {eta}"]
        parts.append(f"cache hits {self.cache_hits}")
        if self.errors:
            kinds = " ".join(f"{k}={n}" for k, n in sorted(self.errors.items()))
            parts.append(f"errors {kinds}")
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        self.lines += 1
        self.emit(self.line(now))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
