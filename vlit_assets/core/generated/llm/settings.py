"""LLM settings, budgets, request and result records, and the request hash that keys the cache."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from vlit_assets.core.ids import text_hash

# USD per million tokens (prompt, completion). Extend it for the models a deployment uses, or
# pass explicit prices in LLMSettings; a model without a price cannot run under a cost budget.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}

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


# LLMResult.error of a request that a spent budget kept from being sent: not a failure.
BUDGET_EXHAUSTED = "budget_exhausted"


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
    # BUDGET_EXHAUSTED | deadline | gave_up | timeout | connection | http_<status> | bad_response
    error: str | None
    error_detail: str | None = None
    finish_reason: str | None = None
    request_hash: str = ""
    wait_ms: float = 0.0  # backoff and waiting for a free slot between attempts


def effective_params(request: LLMRequest, settings: LLMSettings) -> dict[str, Any]:
    return {"temperature": settings.temperature, "max_tokens": settings.max_tokens} | dict(
        request.params
    )


def canonical_request(request: LLMRequest, settings: LLMSettings) -> str:
    payload = {
        "model": settings.model,
        "prompt_version": request.prompt_version,
        "messages": request.messages,
        "params": effective_params(request, settings),
    }
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_hash(request: LLMRequest, settings: LLMSettings) -> str:
    """Cache key: model, prompt version, messages and sampling parameters (never the key)."""
    return text_hash(canonical_request(request, settings))
