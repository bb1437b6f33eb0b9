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
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai

from vlit_assets.core.generated.llm.cache import CachedResponse, RequestCache, cache_entry
from vlit_assets.core.generated.llm.pacing import (
    OVERLOAD,
    AttemptFailure,
    ConcurrencyLimit,
    RunStats,
    backoff_delay,
    classify_failure,
)
from vlit_assets.core.generated.llm.settings import (
    BUDGET_EXHAUSTED,
    Budget,
    LLMRequest,
    LLMResult,
    LLMSettings,
    effective_params,
    request_hash,
)

log = logging.getLogger(__name__)


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
            timeout=openai.Timeout(None, connect=settings.timeout_s),
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
            result = budget_result(request, rhash, reason)
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
        failure: AttemptFailure | None = None
        attempts = 0
        waited = 0.0
        for attempt in range(1, settings.max_retries + 2):
            if not has_slot:
                slot_wait = time.perf_counter()
                if not await self.limit.acquire(self.deadline):
                    failure = AttemptFailure(
                        "deadline", "stage deadline passed before a slot", False
                    )
                    break
                waited += time.perf_counter() - slot_wait
            stop = self.stop_reason()
            if stop is not None:
                self.limit.release()
                failure = AttemptFailure(stop.cause, stop.detail, False)
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
                failure = AttemptFailure(exc.cause, exc.detail, False)
            except (TimeoutError, openai.APIError, ValueError) as exc:
                failure = classify_failure(exc)
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
            if failure.cause in OVERLOAD:
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


def budget_result(request: LLMRequest, rhash: str, reason: str) -> LLMResult:
    return LLMResult(
        request.key, None, 0, 0, 0.0, 0.0, False, 0, BUDGET_EXHAUSTED, reason,
        request_hash=rhash,
    )  # fmt: skip


def _unsent_result(request: LLMRequest, rhash: str, stop: _Stop) -> LLMResult:
    return LLMResult(
        request.key, None, 0, 0, 0.0, 0.0, False, 0, stop.cause, stop.detail,
        request_hash=rhash,
    )  # fmt: skip


def _unheard(result: LLMResult) -> None:
    """The report of a run nobody listens to."""


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
    budget = budget if budget is not None else Budget()
    stats = stats if stats is not None else RunStats()
    plan = plan_sends(reqs, settings, cache, budget, on_result or _unheard)
    run = _Run(settings, cache, budget, on_result, stats)
    stats.planned = len(reqs)
    try:
        await _send_pending(run, deque(plan.pending), reqs, plan.hashes, plan.results)
    finally:
        stats.elapsed_s = time.monotonic() - run.started
        stats.concurrency_final = run.limit.allowed
        stats.concurrency_low = run.limit.lowest
        stats.concurrency_high = run.limit.highest
        stats.peak_in_flight = run.limit.peak
    stop = run.stop_reason()
    return plan.finish(run.report, budget, stats, stop.detail if stop is not None else None)


@dataclass
class SendPlan:
    """A run's requests split into cache hits (answered), leaders to send, and followers that
    share a leader's hash and take its answer."""

    requests: list[LLMRequest]
    hashes: list[str]
    results: list[LLMResult | None]
    leader: dict[str, int]
    followers: list[int]
    pending: list[int]  # leaders, in request order

    def finish(
        self,
        report: Callable[[LLMResult], None],
        budget: Budget,
        stats: RunStats,
        stopped: str | None,
    ) -> list[LLMResult]:
        """Answer the followers, close the stats, log the summary; results in request order."""
        for i in self.followers:
            first = self.results[self.leader[self.hashes[i]]]
            assert first is not None
            follower = _follower(first, self.requests[i].key)
            self.results[i] = follower
            report(follower)
        done = [r for r in self.results if r is not None]
        stats.cache_hits = sum(r.cache_hit for r in done)
        stats.stopped = stopped or budget.exhausted()
        _log_summary(done, budget, stats)
        return done


def plan_sends(
    reqs: list[LLMRequest],
    settings: LLMSettings,
    cache: RequestCache | None,
    budget: Budget,
    report: Callable[[LLMResult], None],
) -> SendPlan:
    """Check the requests, answer the cached ones (reported at once), and list what to send."""
    _check_unique(reqs)
    if budget.max_cost_usd is not None and not settings.price_known:
        raise ValueError(
            f"a cost budget needs a price for model {settings.model!r}: add it to llm.PRICES "
            "or set LLMSettings.price_per_mtok_prompt/_completion"
        )
    hashes = [request_hash(r, settings) for r in reqs]
    hits = cache.get_many(hashes) if cache is not None else {}
    plan = SendPlan(reqs, hashes, [None] * len(reqs), {}, [], [])
    for i, (request, rhash) in enumerate(zip(reqs, hashes, strict=True)):
        if rhash in hits:
            cached = _cached_result(request, rhash, hits[rhash])
            plan.results[i] = cached
            report(cached)
        elif rhash in plan.leader:
            plan.followers.append(i)
        else:
            plan.leader[rhash] = i
            plan.pending.append(i)
    return plan


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
                        unsent = _unsent_result(reqs[i], hashes[i], stop)
                        results[i] = unsent
                        run.queue.put_nowait((unsent, None))
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
