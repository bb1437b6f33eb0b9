"""LLM client over real HTTP against the local fake server: retries, cache, resume, budget, key.

Every test talks to ``FakeOpenAIServer`` through the ``openai`` client; the server's own log
is the witness of what was sent, when, and how often.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from vlit_assets.core.generated.llm.cache import CACHE_TABLE, RequestCache
from vlit_assets.core.generated.llm.client import run_requests, run_requests_sync
from vlit_assets.core.generated.llm.pacing import (
    ConcurrencyLimit,
    RunStats,
    backoff_delay,
    parse_retry_after,
)
from vlit_assets.core.generated.llm.settings import (
    Budget,
    LLMRequest,
    LLMResult,
    LLMSettings,
    request_hash,
)
from vlit_assets.core.generated.replies import parse_reply
from vlit_assets.testing.openai_server import FakeOpenAIServer, Fault

REPO = Path(__file__).resolve().parents[3]
SECRET = "sk-test-Zq8vW3-never-store-me-41"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(max_lifetime_s=60) as srv:
        yield srv


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[RequestCache]:
    con = duckdb.connect(str(tmp_path / "cache.duckdb"))
    yield RequestCache(con)
    con.close()


def make_settings(server: FakeOpenAIServer, **overrides: object) -> LLMSettings:
    base = {
        "base_url": server.base_url,
        "model": "fake-model",
        "api_key": SECRET,
        "concurrency": 4,
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 2.0,
        "price_per_mtok_prompt": 1.0,
        "price_per_mtok_completion": 2.0,
    }
    return LLMSettings(**(base | overrides))  # type: ignore[arg-type]


def make_request(i: int, marker: str = "") -> LLMRequest:
    user = f"Captions:\n- picture {i} {marker}\nObjects:\n- dog: [0.100, 0.200, 0.300, 0.400]"
    return LLMRequest(
        key=f"k{i:03d}",
        messages=[{"role": "system", "content": "Write a conversation."},
                  {"role": "user", "content": user}],
        prompt_version="test-v1",
    )  # fmt: skip


def arrivals(server: FakeOpenAIServer, marker: str) -> list:
    return [e for e in server.log if marker in e.last_user_message]


# ------------------------------------------------------------------------------ happy path


def test_happy_path_then_everything_from_cache(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    settings = make_settings(server)
    requests = [make_request(i) for i in range(12)]
    results = run_requests_sync(requests, settings, cache=cache)

    assert [r.key for r in results] == [r.key for r in requests]
    assert all(r.error is None and not r.cache_hit and r.attempts == 1 for r in results)
    assert all(parse_reply(r.text).ok for r in results)
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in results)
    r0 = results[0]
    assert r0.cost_usd == pytest.approx((r0.prompt_tokens * 1.0 + r0.completion_tokens * 2.0) / 1e6)
    assert "picture 0 " in r0.text  # the server answered this request, not another
    assert len(server.log) == 12 and len(cache) == 12
    assert all(e.auth_header_present for e in server.log)

    again = run_requests_sync(requests, settings, cache=cache)
    assert len(server.log) == 12  # nothing sent
    assert all(r.cache_hit and r.cost_usd == 0.0 and r.attempts == 0 for r in again)
    assert [(r.text, r.prompt_tokens, r.completion_tokens) for r in again] == [
        (r.text, r.prompt_tokens, r.completion_tokens) for r in results
    ]


def test_cache_key_covers_model_version_messages_and_params(server: FakeOpenAIServer) -> None:
    settings = make_settings(server)
    base = make_request(1)
    h = request_hash(base, settings)
    variants = [
        request_hash(base, make_settings(server, model="other-model")),
        request_hash(LLMRequest(base.key, base.messages, "test-v2"), settings),
        request_hash(make_request(2), settings),
        request_hash(LLMRequest(base.key, base.messages, "test-v1", {"seed": 7}), settings),
        request_hash(base, make_settings(server, temperature=0.2)),
    ]
    assert len({h, *variants}) == 6
    # Not part of the key: the caller's id, its metadata, the endpoint and the API key.
    same = [
        request_hash(LLMRequest("other", base.messages, "test-v1", meta={"x": 1}), settings),
        request_hash(base, make_settings(server, api_key="sk-other", base_url="http://h/v1")),
    ]
    assert same == [h, h]


def test_identical_requests_are_sent_once(server: FakeOpenAIServer, cache: RequestCache) -> None:
    settings = make_settings(server)
    twin = make_request(5)
    requests = [twin, LLMRequest("twin", twin.messages, twin.prompt_version)]
    results = run_requests_sync(requests, settings, cache=cache)
    assert len(server.log) == 1
    assert [r.key for r in results] == ["k005", "twin"]
    assert results[0].text == results[1].text and results[1].cache_hit


def test_duplicate_keys_are_refused(server: FakeOpenAIServer) -> None:
    with pytest.raises(ValueError, match="k001"):
        run_requests_sync([make_request(1), make_request(1)], make_settings(server), cache=None)


@pytest.mark.parametrize("param", ["model", "messages", "stream", "n"])
def test_params_may_not_override_what_the_client_sets(param: str) -> None:
    with pytest.raises(ValueError, match=param):
        LLMRequest("k", [{"role": "user", "content": "hi"}], "v", {param: 1})


def test_a_failing_callback_stops_the_run_loudly(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    def explode(result: LLMResult) -> None:
        raise RuntimeError(f"callback failed on {result.key}")

    server.latency_s = 0.01
    settings = make_settings(server, concurrency=2)
    with pytest.raises(RuntimeError, match="callback failed"):
        run_requests_sync(
            [make_request(i) for i in range(40)], settings, cache=cache, on_result=explode
        )
    assert len(server.log) < 40  # no more was paid for once results could not be delivered
    assert len(cache) == len(server.log)  # what was paid for is kept


# ------------------------------------------------------------------------------ retries


def test_429_retry_after_is_honoured(server: FakeOpenAIServer, cache: RequestCache) -> None:
    server.add_faults("RATE", Fault.http(429, retry_after=1))
    results = run_requests_sync(
        [make_request(0, "RATE"), make_request(1)], make_settings(server), cache=cache
    )
    assert results[0].error is None and results[0].attempts == 2
    log = arrivals(server, "RATE")
    assert [e.status for e in log] == [429, 200]
    assert log[1].arrived_s - log[0].arrived_s >= 1.0  # waited at least Retry-After
    assert results[1].attempts == 1


def test_5xx_then_success(server: FakeOpenAIServer, cache: RequestCache) -> None:
    server.add_faults("FLAKY", Fault.http(500), Fault.http(503), Fault.http(502))
    (result,) = run_requests_sync([make_request(0, "FLAKY")], make_settings(server), cache=cache)
    assert result.error is None and result.attempts == 4
    assert [e.status for e in arrivals(server, "FLAKY")] == [500, 503, 502, 200]
    assert len(cache) == 1


def test_timeouts_then_success(server: FakeOpenAIServer, cache: RequestCache) -> None:
    server.add_faults("SLOW", Fault.hang(1.5), Fault.hang(1.5))
    settings = make_settings(server, timeout_s=0.25)
    (result,) = run_requests_sync([make_request(0, "SLOW")], settings, cache=cache)
    assert result.error is None and result.attempts == 3
    assert parse_reply(result.text).ok


def test_retries_exhausted_reports_last_cause(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    server.add_faults("DOWN", *[Fault.http(500)] * 5, Fault.http(503))
    settings = make_settings(server, max_retries=5)
    (result,) = run_requests_sync([make_request(0, "DOWN")], settings, cache=cache)
    assert result.error == "http_503" and result.attempts == 6 and result.text is None
    assert len(arrivals(server, "DOWN")) == 6
    assert len(cache) == 0  # failures are not cached: a later run tries again


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_non_retryable_4xx_fails_at_once(
    server: FakeOpenAIServer, cache: RequestCache, status: int
) -> None:
    server.add_faults("BAD", Fault.http(status))
    (result,) = run_requests_sync([make_request(0, "BAD")], make_settings(server), cache=cache)
    assert result.error == f"http_{status}" and result.attempts == 1
    assert "injected" in (result.error_detail or "")
    assert len(arrivals(server, "BAD")) == 1


def test_a_body_that_is_not_a_chat_completion_is_an_error(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    server.add_faults("PROXY", Fault.garbage_body())
    (result,) = run_requests_sync([make_request(0, "PROXY")], make_settings(server), cache=cache)
    assert result.error == "bad_response" and result.text is None
    assert len(cache) == 0


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    settings = LLMSettings(base_url=url, model="m", api_key=SECRET, max_retries=2,
                           backoff_base_s=0.01, timeout_s=1.0)  # fmt: skip
    (result,) = run_requests_sync([make_request(0)], settings, cache=None)
    assert result.error == "connection" and result.attempts == 3


def test_backoff_uses_full_jitter_and_caps_retry_after(server: FakeOpenAIServer) -> None:
    settings = make_settings(server, backoff_base_s=0.5, backoff_max_s=4.0)
    delays = [backoff_delay(3, settings, None) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in delays) and len(set(delays)) > 100
    assert all(backoff_delay(10, settings, None) <= 4.0 for _ in range(50))
    assert backoff_delay(1, settings, 2.5) == 2.5
    assert backoff_delay(1, settings, 120.0) == 4.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("0.25", 0.25), ("-4", 0.0), ("soon", None), (None, None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


# ------------------------------------------------------------------------------ budget


def test_budget_on_requests_sends_exactly_that_many(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    budget = Budget(max_requests=5, max_tokens=None, max_cost_usd=None)
    requests = [make_request(i) for i in range(20)]
    results = run_requests_sync(requests, make_settings(server), cache=cache, budget=budget)
    done = [r for r in results if r.error is None]
    stopped = [r for r in results if r.error == "budget_exhausted"]
    assert len(done) == 5 and len(stopped) == 15 and len(server.log) == 5
    assert all(r.attempts == 0 and r.text is None for r in stopped)
    assert len(cache) == 5 and budget.requests == 5

    # A fresh budget resumes: the five done come from the cache, the rest are sent.
    rest = run_requests_sync(requests, make_settings(server), cache=cache, budget=Budget())
    assert all(r.error is None for r in rest)
    assert sum(r.cache_hit for r in rest) == 5 and len(server.log) == 20


def test_budget_on_tokens_keeps_requests_in_flight(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    server.latency_s = 0.05  # the four workers all send before the first answer is back
    budget = Budget(max_requests=None, max_tokens=1, max_cost_usd=None)
    requests = [make_request(i) for i in range(20)]
    results = run_requests_sync(
        requests, make_settings(server, concurrency=4, adaptive=False), cache=cache, budget=budget
    )
    done = [r for r in results if r.error is None]
    assert len(done) == 4 and len(server.log) == 4 and len(cache) == 4
    assert [r.error for r in results if r.error] == ["budget_exhausted"] * 16
    assert budget.tokens == sum(r.prompt_tokens + r.completion_tokens for r in done)


def test_budget_on_cost(server: FakeOpenAIServer, cache: RequestCache) -> None:
    settings = make_settings(server, concurrency=1)
    budget = Budget(max_requests=None, max_tokens=None, max_cost_usd=0.0002)
    results = run_requests_sync(
        [make_request(i) for i in range(10)], settings, cache=cache, budget=budget
    )
    sent = [r for r in results if r.error is None]
    assert sent == results[: len(sent)] and all(r.cost_usd > 0 for r in sent)
    # With one worker, sending stops as soon as the spend reaches the limit, not before.
    assert sum(r.cost_usd for r in sent[:-1]) < 0.0002 <= sum(r.cost_usd for r in sent)
    assert budget.cost_usd == pytest.approx(sum(r.cost_usd for r in sent))
    assert all(r.error == "budget_exhausted" for r in results[len(sent) :])
    assert len(server.log) == len(sent) < 10


def test_cost_budget_needs_a_price(server: FakeOpenAIServer) -> None:
    settings = LLMSettings(base_url=server.base_url, model="local-llama", api_key=SECRET)
    assert not settings.price_known
    with pytest.raises(ValueError, match="local-llama"):
        run_requests_sync([make_request(0)], settings, cache=None, budget=Budget(None, None, 1.0))
    assert server.log == []


def test_price_table_fills_prices_and_overrides_win(server: FakeOpenAIServer) -> None:
    listed = LLMSettings(base_url=server.base_url, model="gpt-4o-mini", api_key=SECRET)
    assert listed.price_known and listed.cost_usd(1_000_000, 0) == pytest.approx(0.15)
    custom = LLMSettings(base_url=server.base_url, model="gpt-4o-mini", api_key=SECRET,
                         price_per_mtok_prompt=9.0)  # fmt: skip
    assert custom.cost_usd(1_000_000, 1_000_000) == pytest.approx(9.0 + 0.60)


# ------------------------------------------------------------------------------ crash and resume

CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    import duckdb
    from vlit_assets.core.generated.llm.cache import RequestCache
    from vlit_assets.core.generated.llm.client import run_requests_sync
    from vlit_assets.core.generated.llm.settings import LLMSettings
    from vlit_assets_tests.core.generated.test_llm import make_request

    base_url, db = sys.argv[1], sys.argv[2]
    settings = LLMSettings(base_url=base_url, model="fake-model", api_key="unused",
                           concurrency=4, timeout_s=5.0)
    cache = RequestCache(duckdb.connect(db))

    def report(result):
        print(result.key, flush=True)

    run_requests_sync([make_request(i) for i in range(40)], settings, cache=cache,
                      on_result=report)
    print("finished", flush=True)
    """
)


def _completed_keys(db: Path) -> set[str]:
    con = duckdb.connect(str(db))
    try:
        rows = con.execute(f"SELECT request FROM {CACHE_TABLE}").fetchall()
    finally:
        con.close()
    return {json.loads(r[0])["messages"][1]["content"].split()[3] for r in rows}


def test_killed_run_resumes_without_resending_completed_requests(tmp_path: Path) -> None:
    db = tmp_path / "cache.duckdb"
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    with FakeOpenAIServer(latency_s=0.05, max_lifetime_s=60) as server:
        proc = subprocess.Popen(
            [sys.executable, str(script), server.base_url, str(db)],
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        reported = []
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(line.strip())
            if len(reported) == 10:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL

        completed = _completed_keys(db)
        # Everything the client reported before it died had been persisted.
        assert {f"{int(k[1:])}" for k in reported} <= completed

        settings = make_settings(server, price_per_mtok_prompt=None)
        cache = RequestCache(duckdb.connect(str(db)))
        resumed_at = time.monotonic()
        results = run_requests_sync([make_request(i) for i in range(40)], settings, cache=cache)
        # Requests of the killed client still in the server when it died log after the kill.
        first_run = [e for e in server.log if e.arrived_s < resumed_at]
        second_run = [e for e in server.log if e.arrived_s >= resumed_at]

    assert 10 <= len(first_run) < 40  # it really was interrupted

    assert all(r.error is None for r in results)
    assert {r.key for r in results if r.cache_hit} == {f"k{int(i):03d}" for i in completed}
    resent = {e.last_user_message.split()[3] for e in second_run}
    assert not resent & completed  # no completed request was sent again
    assert len(second_run) == 40 - len(completed)
    ok_arrivals = Counter(e.last_user_message.split()[3] for e in first_run + second_run
                          if e.status == 200)  # fmt: skip
    assert all(ok_arrivals[k] == 1 for k in completed)


def test_cancelled_run_keeps_what_completed(tmp_path: Path) -> None:
    db = tmp_path / "cache.duckdb"
    with FakeOpenAIServer(latency_s=0.02, max_lifetime_s=60) as server:
        settings = make_settings(server)
        requests = [make_request(i) for i in range(40)]

        async def interrupted() -> list[str]:
            cache = RequestCache(duckdb.connect(str(db)))
            seen: list[str] = []
            ready = asyncio.Event()

            def on_result(result: LLMResult) -> None:
                seen.append(result.key)
                if len(seen) >= 8:
                    ready.set()

            task = asyncio.create_task(
                run_requests(requests, settings, cache=cache, on_result=on_result)
            )
            await ready.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cache.con.close()
            return seen

        seen = asyncio.run(interrupted())
        cache = RequestCache(duckdb.connect(str(db)))
        stored = len(cache)
        resumed_at = time.monotonic()
        results = run_requests_sync(requests, settings, cache=cache)
        second_run = [e for e in server.log if e.arrived_s >= resumed_at]

    assert stored >= len(seen) >= 8
    assert sum(r.cache_hit for r in results) == stored
    assert len(second_run) == 40 - stored


def test_sync_wrapper_works_inside_a_running_loop(
    server: FakeOpenAIServer, cache: RequestCache
) -> None:
    async def caller() -> list[LLMResult]:
        return run_requests_sync([make_request(0)], make_settings(server), cache=cache)

    (result,) = asyncio.run(caller())
    assert result.error is None


# ------------------------------------------------------------------------------ the API key


def test_api_key_is_in_no_repr_log_or_table(
    server: FakeOpenAIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(server)
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in json.dumps(settings.public_dict())

    server.add_faults("RETRY", Fault.http(500))
    server.add_faults("REJECT", Fault.http(400))
    db = tmp_path / "keys.duckdb"
    con = duckdb.connect(str(db))
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "vlit_assets"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    results = run_requests_sync(
        [make_request(0), make_request(1, "RETRY"), make_request(2, "REJECT")],
        settings,
        cache=RequestCache(con),
    )
    assert [r.error for r in results] == [None, None, "http_400"]
    assert all(e.auth_header_present for e in server.log)  # the key was used...

    assert caplog.records  # ...and logging was on while it was
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in repr(record.args)
    assert SECRET not in repr(results)

    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    assert CACHE_TABLE in tables
    for table in tables:
        dump = con.execute(f'SELECT * FROM "{table}"').fetchall()
        assert dump and SECRET not in repr(dump)
    con.execute("CHECKPOINT")
    con.close()
    for path in tmp_path.glob("keys.duckdb*"):
        assert SECRET.encode() not in path.read_bytes()


# ------------------------------------------------------------------------------ one-slot server


def test_one_slot_server_gets_no_retry_storm() -> None:
    """24 requests to a server that answers one at a time: no timeouts, no re-sends.

    The timeout (1.5 s) is far shorter than the queue a fixed 16 in flight would build
    (16 x 0.3 s), so a client that neither adapts nor counts the server's progress times out
    and re-sends.
    """
    with FakeOpenAIServer(latency_s=0.3, slots=1, max_lifetime_s=120) as server:
        settings = make_settings(server, concurrency=16, timeout_s=1.5, max_retries=6)
        stats = RunStats()
        results = run_requests_sync(
            [make_request(i) for i in range(24)], settings, cache=None, stats=stats
        )
        arrivals_n = len(server.log)
    assert all(r.error is None for r in results)
    assert arrivals_n <= 26 and stats.attempts <= 26
    assert stats.failed_attempts.get("timeout", 0) == 0 and stats.retries == 0
    assert sum(r.attempts for r in results) == stats.attempts
    # It found out that the server takes one at a time: one answered, one waiting.
    assert stats.concurrency_final <= 2 and stats.concurrency_high <= 4


def test_fixed_concurrency_queued_requests_are_not_resent() -> None:
    """Eight in flight on one slot: the last waits 8 x 0.3 s, far past timeout_s = 1.2 s, but
    the server answers another request every 0.3 s, so none of them times out."""
    with FakeOpenAIServer(latency_s=0.3, slots=1, max_lifetime_s=120) as server:
        settings = make_settings(server, concurrency=8, adaptive=False, timeout_s=1.2)
        stats = RunStats()
        results = run_requests_sync(
            [make_request(i) for i in range(12)], settings, cache=None, stats=stats
        )
        hashes = Counter(e.request_hash for e in server.log)
    assert all(r.error is None and r.attempts == 1 for r in results)
    assert len(hashes) == 12 and set(hashes.values()) == {1}
    assert stats.peak_in_flight == 8


def test_a_hung_server_still_times_out_per_attempt(server: FakeOpenAIServer) -> None:
    server.add_faults("HUNG", Fault.hang(3.0), Fault.hang(3.0))
    settings = make_settings(server, timeout_s=0.3, max_retries=1)
    stats = RunStats()
    (result,) = run_requests_sync([make_request(0, "HUNG")], settings, cache=None, stats=stats)
    assert result.error == "timeout" and result.attempts == 2
    assert stats.failed_attempts["timeout"] == 2 and stats.retries == 1
    assert result.wait_ms > 0  # the backoff between the attempts is counted


def test_stage_deadline_ends_the_run(server: FakeOpenAIServer) -> None:
    server.add_faults("STUCK", *[Fault.hang(5.0)] * 3)
    settings = make_settings(server, timeout_s=4.0, deadline_s=0.5, concurrency=2)
    stats = RunStats()
    results = run_requests_sync(
        [make_request(i, "STUCK") for i in range(6)], settings, cache=None, stats=stats
    )
    # Ended by the deadline, not by the 4 s per-attempt timeout: no attempt failed as timeout.
    assert {r.error for r in results} == {"deadline"}
    assert "timeout" not in stats.failed_attempts
    assert "deadline" in (stats.stopped or "")
    assert len(arrivals(server, "STUCK")) < 6  # the rest were never sent


def test_a_dead_endpoint_is_given_up_on(tmp_path: Path) -> None:
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    settings = LLMSettings(base_url=url, model="m", max_retries=2, backoff_base_s=0.001,
                           timeout_s=1.0, give_up_after=4)  # fmt: skip
    stats = RunStats()
    results = run_requests_sync(
        [make_request(i) for i in range(10)], settings, cache=None, stats=stats
    )
    assert all(r.error in {"connection", "gave_up"} for r in results)
    assert sum(r.error == "gave_up" for r in results) >= 7
    assert stats.attempts <= 5  # four in a row, maybe one more already on its way


def test_adaptive_limit_reaches_the_ceiling_on_a_server_that_runs_requests_in_parallel(
    server: FakeOpenAIServer,
) -> None:
    server.latency_s = 0.1
    stats = RunStats()
    settings = make_settings(server, concurrency=8, timeout_s=5.0)
    results = run_requests_sync(
        [make_request(i) for i in range(64)], settings, cache=None, stats=stats
    )
    assert all(r.error is None for r in results)
    assert stats.concurrency_high == 8 and stats.peak_in_flight == 8


def test_429_halves_the_limit_down_to_one(server: FakeOpenAIServer) -> None:
    limit = ConcurrencyLimit(8, adaptive=True)
    limit.limit = 8.0
    limit.on_overload(time.monotonic())
    assert limit.allowed == 4
    limit.on_overload(time.monotonic())
    assert limit.allowed == 2
    limit.on_overload(time.monotonic())
    assert limit.allowed == 1
    fixed = ConcurrencyLimit(8, adaptive=False)
    fixed.on_overload(time.monotonic())
    assert fixed.allowed == 8
