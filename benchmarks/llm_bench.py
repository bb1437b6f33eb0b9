"""Throughput of the self-instruct LLM client (core/generated/llm/) against the local fake server.

Run: ``.venv/bin/python benchmarks/llm_bench.py [--requests 960]``. Real self-instruct prompts
(system prompt, in-context example, annotations) go over HTTP through the ``openai`` client to
``vlit_assets/testing/openai_server.py`` with 100 ms fixed latency, the request cache in a DuckDB
file. Targets: >= 120 req/s at concurrency 16 (ideal 160) with the server in its own process,
and >= 5,000 req/s when every request is a cache hit. ``run_llm_bench()`` returns the rows
(stage, work, wall s, rate first) for ``benchmarks/generate.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vlit_assets.core.generated.llm.cache import RequestCache, cache_entry  # noqa: E402
from vlit_assets.core.generated.llm.client import run_requests_sync  # noqa: E402
from vlit_assets.core.generated.llm.settings import LLMRequest, LLMResult, LLMSettings  # noqa: E402
from vlit_assets.core.generated.prompts import PROMPT_VERSION, build_messages  # noqa: E402
from vlit_assets.testing.openai_server import FakeOpenAIServer, Fault  # noqa: E402

LATENCY_S = 0.100
CONCURRENCY = 16


def bench_requests(n: int, offset: int = 0) -> list[LLMRequest]:
    """Distinct requests shaped like real ones (about 1,500 prompt tokens each)."""
    objects = [{"category": "dog", "bbox": (0.1, 0.2, 0.5, 0.9)},
               {"category": "frisbee", "bbox": (0.55, 0.1, 0.65, 0.2)}]  # fmt: skip
    out = []
    for i in range(offset, offset + n):
        messages = build_messages(
            ("global", "negative")[i % 2],
            captions=[f"A dog leaps for a frisbee in park number {i}.", "A dog playing."],
            objects=objects,
            present=["dog", "frisbee"],
            absent=["cat", "kite"],
            region=None,
        )
        out.append(LLMRequest(f"bench-{i}", messages, PROMPT_VERSION, {"seed": i}))
    return out


@contextmanager
def server_process(latency_s: float) -> Iterator[str]:
    """The fake server in a process of its own, so it does not share the client's GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlit_assets.testing.openai_server",
         "--latency-ms", str(latency_s * 1000), "--lifetime-s", "600"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the server stops at EOF
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _row(stage: str, work: str, seconds: float, n: int, **extra: object) -> dict:
    return {"stage": stage, "work": work, "wall_s": f"{seconds:.2f}",
            "rate": f"{n / seconds:,.0f} req/s"} | extra  # fmt: skip


def _summary(results: list[LLMResult]) -> dict:
    sent = [r for r in results if not r.cache_hit and r.error is None]
    mean = sum(r.latency_ms for r in sent) / len(sent) if sent else 0.0
    return {
        "errors": sum(r.error is not None for r in results),
        "cache_hits": sum(r.cache_hit for r in results),
        "mean_latency_ms": f"{mean:.0f}",
    }


def _timed(requests: list[LLMRequest], settings: LLMSettings, cache: RequestCache | None):  # noqa: ANN202
    start = time.perf_counter()
    results = run_requests_sync(requests, settings, cache=cache)
    return results, time.perf_counter() - start


def bench_network(n: int, tmp: Path, *, in_process: bool) -> dict:
    requests = bench_requests(n)
    cache = RequestCache(duckdb.connect(str(tmp / f"net-{in_process}.duckdb")))
    where = "server in this process" if in_process else "server in own process"
    if in_process:
        with FakeOpenAIServer(latency_s=LATENCY_S, max_lifetime_s=600) as srv:
            settings = LLMSettings(base_url=srv.base_url, model="bench", concurrency=CONCURRENCY)
            results, seconds = _timed(requests, settings, cache)
    else:
        with server_process(LATENCY_S) as url:
            settings = LLMSettings(base_url=url, model="bench", concurrency=CONCURRENCY)
            results, seconds = _timed(requests, settings, cache)
    cache.con.close()
    work = f"{n} requests, 100 ms server, concurrency {CONCURRENCY}, {where}, cache writes on"
    target = "target >= 120 req/s (ideal 160)" if not in_process else "for comparison"
    return _row("llm client (network)", work, seconds, n, target=target, **_summary(results))


def bench_faults(n: int, tmp: Path) -> dict:
    requests = bench_requests(n)
    with FakeOpenAIServer(latency_s=LATENCY_S, max_lifetime_s=600) as srv:
        for i in range(0, n, 10):  # every tenth request: one 503, then success
            srv.add_faults(f"park number {i}.", Fault.http(503))
        settings = LLMSettings(base_url=srv.base_url, model="bench", concurrency=CONCURRENCY,
                               backoff_base_s=0.05)  # fmt: skip
        results, seconds = _timed(requests, settings, None)
    work = f"{n} requests, 10% answered 503 once, 100 ms server, server in this process"
    return _row("llm client (retries)", work, seconds, n, target="all succeed",
                **_summary(results))  # fmt: skip


def prefill(cache: RequestCache, requests: list[LLMRequest], settings: LLMSettings) -> None:
    text = '{"conversation": [{"q": "What is shown?", "a": "A dog."}, {"q": "Why?", "a": "Play."}]}'
    cache.put_many([
        cache_entry(r, settings, text=text, finish_reason="stop", prompt_tokens=1500,
                    completion_tokens=40)
        for r in requests
    ])  # fmt: skip


def bench_cached(n: int, tmp: Path) -> dict:
    requests = bench_requests(n)
    settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="bench")  # never contacted
    cache = RequestCache(duckdb.connect(str(tmp / "cached.duckdb")))
    prefill(cache, requests, settings)
    results, seconds = _timed(requests, settings, cache)
    cache.con.close()
    work = f"{n} requests, all in the DuckDB cache (hash, one bulk read, results)"
    return _row("llm client (cached)", work, seconds, n, target="target >= 5,000 req/s",
                **_summary(results))  # fmt: skip


def bench_cache_writes(n: int, tmp: Path) -> list[dict]:
    """What durability costs: one commit per completion versus one commit per batch of 16."""
    settings = LLMSettings(base_url="http://127.0.0.1:9/v1", model="bench")
    rows = []
    for batch in (1, 16):
        cache = RequestCache(duckdb.connect(str(tmp / f"writes-{batch}.duckdb")))
        requests = bench_requests(n, offset=100_000 * batch)
        start = time.perf_counter()
        for k in range(0, n, batch):
            prefill(cache, requests[k : k + batch], settings)
        seconds = time.perf_counter() - start
        cache.con.close()
        rows.append(_row("llm cache writes", f"{n} completions, {batch} per commit", seconds, n,
                         target=f"{seconds / n * 1000:.2f} ms per completion"))  # fmt: skip
    return rows


def run_llm_bench(n_requests: int = 960, n_cached: int = 20_000) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="vlit_llm_bench_") as tmp:
        path = Path(tmp)
        rows = [
            bench_network(n_requests, path, in_process=False),
            bench_network(n_requests, path, in_process=True),
            bench_faults(n_requests // 2, path),
            bench_cached(n_cached, path),
        ]
        rows += bench_cache_writes(500, path)
    return rows


def print_table(rows: list[dict]) -> None:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=960)
    parser.add_argument("--cached", type=int, default=20_000)
    args = parser.parse_args()
    print_table(run_llm_bench(args.requests, args.cached))


if __name__ == "__main__":
    main()
