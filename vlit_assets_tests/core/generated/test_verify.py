"""Verification pass: prompts, verdict parsing, and a round trip through the local server."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from vlit_assets.core.generated.llm.cache import RequestCache
from vlit_assets.core.generated.llm.client import run_requests_sync
from vlit_assets.core.generated.llm.settings import Budget, LLMSettings
from vlit_assets.core.generated.prompts import VERIFY_PROMPT_VERSION
from vlit_assets.core.generated.replies import parse_verdicts
from vlit_assets.core.generated.self_instruct import rows_from_results
from vlit_assets.core.generated.verify import plan_verification, verification_rows
from vlit_assets.core.schemas import GENERATED_LLM_VERIFICATION
from vlit_assets.testing.openai_server import FakeOpenAIServer, Fault
from vlit_assets_tests.core.generated.test_self_instruct import SRC, frames, plan


def _reply(*verdicts: tuple[int, str]) -> str:
    return json.dumps({"verdicts": [{"answer": k, "verdict": v} for k, v in verdicts]})


@pytest.mark.parametrize(
    ("text", "finish", "verdicts", "failure"),
    [
        (_reply((1, "supported"), (2, "unknown")), "stop", ["supported", "unknown"], None),
        (_reply((2, "contradicted"), (1, "Supported")), "stop", ["supported", "contradicted"],
         None),
        ("```json\n" + _reply((1, "supported"), (2, "supported")) + "\n```", "stop",
         ["supported", "supported"], None),
        (_reply((1, "supported"), (2, "supported"))[:-1], "stop", ["supported", "supported"],
         None),
        (_reply((1, "supported"), (2, "supported"))[:-1], "length", [], "truncated_json"),
        (_reply((1, "supported")), "stop", [], "bad_shape"),
        (_reply((1, "supported"), (2, "probably")), "stop", [], "bad_shape"),
        (_reply((1, "supported"), (1, "unknown")), "stop", [], "bad_shape"),
        ("All answers look fine to me.", "stop", [], "no_json"),
        ("", "stop", [], "empty"),
    ],
)  # fmt: skip
def test_parse_verdicts(text: str, finish: str, verdicts: list, failure: str | None) -> None:
    parsed = parse_verdicts(text, 2, finish_reason=finish)
    assert parsed.failure == failure and parsed.verdicts == verdicts


def by_key(results: list, key: str):
    return next(r for r in results if r.key == key)


def _generated(tmp_path: Path, server: FakeOpenAIServer) -> tuple:
    settings = LLMSettings(base_url=server.base_url, model="gen", timeout_s=5.0,
                           backoff_base_s=0.01)  # fmt: skip
    requests = plan(tmp_path)
    results = run_requests_sync(requests, settings, cache=None)
    return rows_from_results(requests, results, source=SRC, run_id="r1", model="gen")


def test_verification_round_trip_with_verdicts_failures_and_budget(tmp_path: Path) -> None:
    f = frames()
    with FakeOpenAIServer(max_lifetime_s=60) as server:
        rows = _generated(tmp_path, server)
        requests = plan_verification(rows, f["images"], f["captions"], f["objects"], f["tags"])
        assert len(requests) == 6 and len({r.key for r in requests}) == 6
        assert all(r.prompt_version == VERIFY_PROMPT_VERSION for r in requests)
        region = next(r for r in requests if "Region (in the red box)" in r.messages[1]["content"])
        assert "Answer 2: " in region.messages[1]["content"]
        # One verdict reply says an answer is contradicted, one is not a verdict at all.
        bus = _reply((1, "contradicted"), (2, "supported"))
        server.add_faults("A red bus", Fault("content", content=bus))
        server.add_faults("A dog and a cat", Fault("content", content="Looks right."))
        settings = LLMSettings(base_url=server.base_url, model="judge", timeout_s=5.0)
        cache = RequestCache(duckdb.connect(str(tmp_path / "cache.duckdb")))
        server.clear_log()
        budget = Budget(max_requests=3)
        results = run_requests_sync(requests, settings, cache=cache, budget=budget)
        posts = len(server.log)
        out = verification_rows(requests, results, model="judge", run_id="r2")
        answered = [r for r in requests if by_key(results, r.key).error is None]
        again = run_requests_sync(answered, settings, cache=cache)
    assert out.columns == list(GENERATED_LLM_VERIFICATION.columns)
    assert out.height == 6 and set(out["verifier_model"]) == {"judge"}
    assert posts == 3  # the verifier is counted in the budget
    assert "llm_error:budget_exhausted" in out["error"].to_list()
    judged = out.filter(out["error"].is_null())
    assert judged.height > 0
    assert judged["verified_contradicted"].to_list().count(1) >= 1  # the bus verdict
    assert (judged["verified_supported"] + judged["verified_contradicted"]
            + judged["verified_unknown"] == judged["n_answers"]).all()  # fmt: skip
    assert (judged["verified_share"] == judged["verified_supported"] / judged["n_answers"]).all()
    assert set(out["error"].drop_nulls()) <= {"llm_parse:no_json", "llm_error:budget_exhausted"}
    assert answered and all(r.cache_hit for r in again)  # verdicts are cached like any reply


def test_verified_scores_reach_the_scored_rows(tmp_path: Path) -> None:
    from vlit_assets.core.scored.quality import score_conversations

    f = frames()
    with FakeOpenAIServer(max_lifetime_s=60) as server:
        rows = _generated(tmp_path, server)
        requests = plan_verification(rows, f["images"], f["captions"], f["objects"], f["tags"])
        server.add_faults("A red bus", Fault("content", content="not a verdict"))
        settings = LLMSettings(base_url=server.base_url, model="judge", timeout_s=5.0)
        results = run_requests_sync(requests, settings, cache=None)
    verification = verification_rows(requests, results, model="judge", run_id="r2")
    scored = score_conversations(
        rows, objects=f["objects"], tags=f["tags"], categories=None, captions=None,
        embedder=None, cache=None, verification=verification,
    ).scored  # fmt: skip
    got = {r["image_id"]: (r["verified_share"], r["verifier_model"]) for r in scored.to_dicts()}
    assert got["img_a"] == (1.0, "judge")  # every answer supported
    assert got["img_b"] == (None, None)  # no verdict: null, never a pass
    assert set(scored["verifier_prompt_version"].drop_nulls()) == {VERIFY_PROMPT_VERSION}
