"""A local OpenAI-compatible chat-completions server for tests and benchmarks, with fault injection.

It listens on 127.0.0.1 only, answers ``POST /v1/chat/completions`` with a deterministic JSON
conversation derived from the request, and can be told per request what to do instead (rate
limit, server error, hang, malformed or truncated content, refusal). Every arrival is logged
with its request hash so tests can prove what was (not) sent twice. It shuts itself down after
``max_lifetime_s`` and refuses work beyond ``max_requests`` so a stuck test cannot leave it
running.

``slots=1`` makes it behave like llama.cpp's server on a laptop: one reply is worked on at a
time (``latency_s`` each) and the rest wait in arrival order; a reply whose client gave up is
still worked on to the end, as a real server does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REFUSAL_TEXT = "I'm sorry, but I can't help with that request."


@dataclass(frozen=True)
class Fault:
    """What the server does instead of (or before) a normal answer to one arrival.

    kind: ``status`` (HTTP error ``status`` with optional ``retry_after`` header), ``hang``
    (wait ``hang_s`` before answering normally), ``content`` (a 200 whose message content is
    ``content``, with ``finish_reason``), ``raw`` (a 200 whose whole body is ``content``).
    """

    kind: str
    status: int = 200
    retry_after: str | None = None
    hang_s: float = 0.0
    content: str | None = None
    finish_reason: str = "stop"

    @staticmethod
    def http(status: int, retry_after: float | str | None = None) -> Fault:
        ra = None if retry_after is None else str(retry_after)
        return Fault("status", status=status, retry_after=ra)

    @staticmethod
    def hang(seconds: float) -> Fault:
        return Fault("hang", hang_s=seconds)

    @staticmethod
    def malformed() -> Fault:
        return Fault("content", content='{"conversation": [{"q": "What is it?" "a": "A cat."}]}')

    @staticmethod
    def truncated() -> Fault:
        text = '{"conversation": [{"q": "What is shown?", "a": "A kitchen with a wom'
        return Fault("content", content=text, finish_reason="length")

    @staticmethod
    def garbage_body() -> Fault:
        """A 200 whose HTTP body is not JSON at all (a broken proxy, say)."""
        return Fault("raw", content="<html>502 Bad Gateway</html>")

    @staticmethod
    def refusal() -> Fault:
        return Fault("content", content=REFUSAL_TEXT)


Matcher = Callable[[dict], bool]


@dataclass
class _Rule:
    match: Matcher
    faults: tuple[Fault, ...]


@dataclass(frozen=True)
class LoggedRequest:
    """One arrival: which request (hash of model, messages and params), when, what we answered."""

    request_hash: str
    arrived_s: float  # time.monotonic() at arrival
    status: int
    fault: str | None
    last_user_message: str
    auth_header_present: bool


def request_hash(body: dict) -> str:
    """Hash of the request body as sent: the same request always hashes the same."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def last_user_message(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


def contains(text: str) -> Matcher:
    """A matcher for requests whose last user message contains ``text``."""
    return lambda body: text in last_user_message(body)


def default_responder(body: dict) -> str:
    """A valid conversation JSON built only from the request's last user message; for a
    verification request (core/verify.py), a "supported" verdict for every answer."""
    user = last_user_message(body)
    system = next((m.get("content", "") for m in body.get("messages") or []
                   if m.get("role") == "system"), "")  # fmt: skip
    if isinstance(system, str) and system.startswith("You check answers"):
        n = len(re.findall(r"^Answer \d+: ", user, flags=re.MULTILINE))
        verdicts = [{"answer": k, "verdict": "supported", "reason": "as annotated"}
                    for k in range(1, n + 1)]  # fmt: skip
        return json.dumps({"verdicts": verdicts})
    captions = re.findall(r"^- (.+)$", user.split("Objects:")[0], flags=re.MULTILINE)
    objects = re.findall(r"^- ([^:\n]+): \[", user, flags=re.MULTILINE)
    region = re.search(r"^Region \(in the red box\): ([^:\n]+):", user, flags=re.MULTILINE)
    caption = captions[0] if captions else "a scene"
    if region:
        q1, a1 = "What is the object in the red box?", f"It is a {region.group(1)}."
    else:
        q1, a1 = "What does the image show?", caption
    names = ", ".join(sorted(set(objects))) or "nothing annotated"
    conversation = [
        {"q": q1, "a": a1},
        {"q": "Which objects can you see?", "a": f"I can see: {names}."},
    ]
    return json.dumps({"conversation": conversation})


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class FakeOpenAIServer:
    """Threaded HTTP server; use as a context manager. ``base_url`` ends in ``/v1``."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        responder: Callable[[dict], str] = default_responder,
        max_lifetime_s: float = 300.0,
        max_requests: int = 200_000,
        slots: int | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.slots = slots
        self._slot_sem = threading.Semaphore(slots) if slots else None
        self.busy_s = 0.0  # time spent working on replies, summed over slots
        self.responder = responder
        self.max_lifetime_s = max_lifetime_s
        self.max_requests = max_requests
        self._rules: list[_Rule] = []
        self._seen: dict[tuple[int, str], int] = {}
        self._log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # -- programming the faults --------------------------------------------------------------

    def add_faults(self, match: Matcher | str, *faults: Fault) -> None:
        """For each distinct request matching ``match``: its n-th arrival gets ``faults[n]``.

        Arrivals past the end of ``faults`` are answered normally. A string matches requests
        whose last user message contains it.
        """
        matcher = contains(match) if isinstance(match, str) else match
        with self._lock:
            self._rules.append(_Rule(matcher, tuple(faults)))

    def _fault_for(self, body: dict, rhash: str) -> Fault | None:
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.match(body):
                    n = self._seen.get((index, rhash), 0)
                    self._seen[(index, rhash)] = n + 1
                    return rule.faults[n] if n < len(rule.faults) else None
        return None

    # -- the log -----------------------------------------------------------------------------

    @property
    def log(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address: (host, port)
        return f"http://{host}:{port}/v1"

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def start(self) -> FakeOpenAIServer:
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._timer = threading.Timer(self.max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering ---------------------------------------------------------------------------

    def handle(self, body: dict, auth: bool) -> tuple[int, dict[str, str], dict | str]:
        """Status, extra headers and JSON body for one request (runs in a handler thread)."""
        rhash = request_hash(body)
        arrived = time.monotonic()
        if len(self._log) >= self.max_requests:
            fault: Fault | None = Fault.http(503)
        else:
            fault = self._fault_for(body, rhash)
        if self._slot_sem is not None:
            with self._slot_sem:
                began = time.monotonic()
                if self.latency_s:
                    self._stop.wait(self.latency_s)
                status, headers, payload = self._answer(body, fault)
                with self._lock:
                    self.busy_s += time.monotonic() - began
        else:
            if self.latency_s:
                self._stop.wait(self.latency_s)
            status, headers, payload = self._answer(body, fault)
        self._record(
            LoggedRequest(
                rhash,
                arrived,
                status,
                fault.kind if fault else None,
                last_user_message(body),
                auth,
            )
        )
        return status, headers, payload

    def _answer(self, body: dict, fault: Fault | None) -> tuple[int, dict[str, str], dict | str]:
        if fault is not None and fault.kind == "raw":
            return 200, {}, fault.content or ""
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            error = {"message": f"injected {fault.status}", "type": "injected", "code": None}
            return fault.status, headers, {"error": error}
        if fault is not None and fault.kind == "hang":
            self._stop.wait(fault.hang_s)
        if fault is not None and fault.kind == "content":
            content, finish = fault.content or "", fault.finish_reason
        else:
            content, finish = self.responder(body), "stop"
        prompt = sum(_tokens(str(m.get("content", ""))) for m in body.get("messages") or [])
        completion = _tokens(content)
        return (
            200,
            {},
            {
                "id": f"chatcmpl-{request_hash(body)[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "unknown"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else header and body writes stall on delayed ACKs
    server_ref: FakeOpenAIServer
    timeout = 10  # idle keep-alive connections close instead of pinning a thread forever

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, {}, {"error": {"message": "body is not JSON"}})
            return
        auth = bool(self.headers.get("Authorization"))
        status, headers, payload = self.server_ref.handle(body, auth)
        self._send(status, headers, payload)

    def _send(self, status: int, headers: dict[str, str], payload: dict | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        data = text.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing to tell it

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the structured log above replaces stderr chatter


def main() -> None:
    """Serve from a process of its own (benchmarks): print the base URL, stop at stdin EOF."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--lifetime-s", type=float, default=300.0)
    parser.add_argument("--slots", type=int, default=None, help="replies worked on at once")
    args = parser.parse_args()
    with FakeOpenAIServer(
        latency_s=args.latency_ms / 1000, max_lifetime_s=args.lifetime_s, slots=args.slots
    ) as srv:
        print(srv.base_url, flush=True)
        watcher = threading.Thread(target=sys.stdin.read, daemon=True)
        watcher.start()
        while watcher.is_alive() and not srv.stopped:
            watcher.join(timeout=0.2)


if __name__ == "__main__":
    main()
