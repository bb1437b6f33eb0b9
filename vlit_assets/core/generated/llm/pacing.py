"""LLM request pacing: failure causes, retry backoff, adaptive concurrency, run stats, progress."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import openai

from vlit_assets.core.generated.llm.settings import LLMResult, LLMSettings

# 408 and 409 are the server saying "try again"; every other 4xx means the request is wrong.
_RETRYABLE_4XX = frozenset({408, 409, 429})


@dataclass(frozen=True)
class AttemptFailure:
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


def classify_failure(exc: BaseException) -> AttemptFailure:
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return AttemptFailure("timeout", "no answer within timeout_s", True)
    if isinstance(exc, openai.APIConnectionError):
        return AttemptFailure("connection", type(exc.__cause__ or exc).__name__, True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in _RETRYABLE_4XX or status >= 500
        retry_after = parse_retry_after(exc.response.headers.get("retry-after"))
        return AttemptFailure(f"http_{status}", str(exc.message)[:300], retryable, retry_after)
    return AttemptFailure("bad_response", f"{type(exc).__name__}: {str(exc)[:300]}", False)


def backoff_delay(attempt: int, settings: LLMSettings, retry_after_s: float | None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    A server's Retry-After wins (capped at backoff_max_s); otherwise full jitter, so many
    clients that failed together do not come back together.
    """
    if retry_after_s is not None:
        return min(retry_after_s, settings.backoff_max_s)
    ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
    return random.uniform(0.0, ceiling)


OVERLOAD = frozenset({"timeout", "connection", "http_429", "http_503"})
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
