"""LLM requests on a ShardMap: the driver reads the cache and spends the budget, shards send.

The driver answers cached requests, decides which uncached ones the request budget lets out
(the first ones in request order, as a local run sends them), and hands those to the shards.
Each shard sends its requests with the ordinary client (``client.run_requests``) and its share
of the concurrency, the token and the cost budget, so the shards together never exceed the
global limits. Replies come back to the driver, which writes the cache and reports them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vlit_assets.core.generated.llm.cache import RequestCache, cache_entry
from vlit_assets.core.generated.llm.client import budget_result, plan_sends, run_requests_sync
from vlit_assets.core.generated.llm.pacing import RunStats
from vlit_assets.core.generated.llm.settings import Budget, LLMRequest, LLMResult, LLMSettings
from vlit_assets.core.shards import ShardMap, cut, shard_count

LLM_STEP = "generated/llm"
MIN_REQUESTS_PER_SHARD = 4


@dataclass(frozen=True)
class RequestShard:
    """What one task sends, with its settings (its concurrency share) and budget share."""

    requests: list[LLMRequest]
    settings: LLMSettings
    max_tokens: int | None
    max_cost_usd: float | None


@dataclass(frozen=True)
class ShardReply:
    results: list[LLMResult]
    stats: RunStats
    spent: Budget


def send_shard(shard: RequestShard) -> ShardReply:
    """Send a shard's requests (no cache here: the driver keeps it) within its budget share.

    No request limit: the driver gave the shard only requests the request budget allows.
    """
    budget = Budget(None, shard.max_tokens, shard.max_cost_usd)
    stats = RunStats()
    results = run_requests_sync(
        shard.requests, shard.settings, cache=None, budget=budget, stats=stats
    )
    return ShardReply(results, stats, budget)


def _share(limit: float | None, spent: float, parts: int, kind: type) -> float | None:
    if limit is None:
        return None
    return kind(max(0, limit - spent) / parts)


def _merge(into: RunStats, parts: list[RunStats]) -> None:
    """Sums of the wire counts; the concurrency figures are per shard (lowest, highest)."""
    for s in parts:
        into.sent += s.sent
        into.attempts += s.attempts
        into.retries += s.retries
        into.failed_attempts.update(s.failed_attempts)
        into.wait_s += s.wait_s
    if parts:
        into.concurrency_low = min(s.concurrency_low for s in parts)
        into.concurrency_high = max(s.concurrency_high for s in parts)
        into.concurrency_final = max(s.concurrency_final for s in parts)
        into.peak_in_flight = max(s.peak_in_flight for s in parts)


def run_requests_mapped(
    requests: Iterable[LLMRequest],
    settings: LLMSettings,
    *,
    cache: RequestCache | None,
    mapper: ShardMap,
    budget: Budget | None = None,
    on_result: Callable[[LLMResult], None] | None = None,
    stats: RunStats | None = None,
) -> list[LLMResult]:
    """``client.run_requests_sync`` with the uncached requests sent from ``mapper``'s shards.

    Same results in the same order; a request the request budget keeps back is
    ``budget_exhausted`` exactly as in a local run. Replies are cached when all shards are
    back (a local run writes each as it arrives).
    """
    started = time.monotonic()
    reqs = list(requests)
    budget = budget if budget is not None else Budget()
    stats = stats if stats is not None else RunStats()
    report = on_result or (lambda _: None)
    plan = plan_sends(reqs, settings, cache, budget, report)
    stats.planned = len(reqs)
    allowed = 0 if budget.exhausted() else len(plan.pending)
    if budget.max_requests is not None:
        allowed = min(allowed, max(0, budget.max_requests - budget.requests))
    send, held = plan.pending[:allowed], plan.pending[allowed:]
    parts = shard_count(mapper, len(send), min_items=MIN_REQUESTS_PER_SHARD)
    spans = cut(len(send), parts)
    running = max(1, min(len(spans), mapper.slots()))
    mine = dataclasses.replace(settings, concurrency=max(1, settings.concurrency // running))
    work = [
        RequestShard(
            [reqs[i] for i in send[s : s + k]],
            mine,
            _share(budget.max_tokens, budget.tokens, len(spans), int),  # type: ignore[arg-type]
            _share(budget.max_cost_usd, budget.cost_usd, len(spans), float),
        )
        for s, k in spans
    ]
    replies = mapper.map(send_shard, work, step=LLM_STEP, sizes=[k for _, k in spans])
    for (s, _), reply in zip(spans, replies, strict=True):
        for i, result in zip(send[s : s + len(reply.results)], reply.results, strict=True):
            plan.results[i] = result
        budget.requests += reply.spent.requests
        budget.tokens += reply.spent.tokens
        budget.cost_usd += reply.spent.cost_usd
    if cache is not None:
        entries = [
            cache_entry(
                reqs[i],
                settings,
                text=r.text or "",
                finish_reason=r.finish_reason,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
            )
            for i in send
            if (r := plan.results[i]) is not None and r.error is None
        ]
        if entries:
            cache.put_many(entries)
    for i in send:
        report(plan.results[i])  # type: ignore[arg-type]
    reason = Budget(budget.max_requests, requests=budget.max_requests or 0).exhausted()
    for i in held:
        plan.results[i] = result = budget_result(reqs[i], plan.hashes[i], reason or "")
        report(result)
    _merge(stats, [r.stats for r in replies])
    stats.elapsed_s = time.monotonic() - started
    stopped = next((r.stats.stopped for r in replies if r.stats.stopped), None)
    return plan.finish(report, budget, stats, stopped)
