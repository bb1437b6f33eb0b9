"""LLM client against a one-slot server (llama.cpp on a laptop): attempts, timeouts, time.

Starts the local test server in one-slot mode (one reply at a time, ``--reply-s`` each), sends
``--requests`` requests with 16 allowed in flight and a per-attempt timeout of ``--timeout-s``,
and prints what it cost against the ideal serial time. The defaults scale the field report
(5 s replies, 60 s timeout, 24 requests) down by ten.

    python -m benchmarks.llm_one_slot [--reply-s 0.5] [--timeout-s 6] [--requests 24]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from vlit_assets.core.generated.llm.client import run_requests_sync
from vlit_assets.core.generated.llm.settings import LLMRequest, LLMSettings
from vlit_assets.testing.openai_server import FakeOpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reply-s", type=float, default=0.5)
    parser.add_argument("--timeout-s", type=float, default=6.0)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--fixed", action="store_true", help="16 in flight, not adaptive")
    args = parser.parse_args()
    requests = [
        LLMRequest(f"k{i}", [{"role": "user", "content": f"Captions:\n- picture {i}"}], "bench")
        for i in range(args.requests)
    ]
    with FakeOpenAIServer(latency_s=args.reply_s, slots=1, max_lifetime_s=3600) as server:
        settings = LLMSettings(base_url=server.base_url, model="m", concurrency=16,
                               adaptive=not args.fixed, timeout_s=args.timeout_s,
                               max_retries=6)  # fmt: skip
        started = time.monotonic()
        results = run_requests_sync(requests, settings, cache=None)
        elapsed = time.monotonic() - started
        posts = len(server.log)
        busy = server.busy_s
    errors = Counter(r.error for r in results if r.error)
    ideal = args.requests * args.reply_s
    print(f"{'requests':<28}{args.requests:>10}")
    print(f"{'POSTs (attempts)':<28}{posts:>10}")
    print(f"{'answered':<28}{sum(r.error is None for r in results):>10}")
    print(f"{'errors':<28}{dict(errors)!s:>10}")
    print(f"{'elapsed s':<28}{elapsed:>10.1f}")
    print(f"{'ideal serial s':<28}{ideal:>10.1f}")
    print(f"{'over ideal':<28}{elapsed / ideal - 1:>10.1%}")
    print(f"{'server busy share':<28}{busy / elapsed:>10.1%}")


if __name__ == "__main__":
    main()
