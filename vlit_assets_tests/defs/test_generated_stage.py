"""The generated stage through Dagster: templates by default, self-instruct over HTTP."""

from __future__ import annotations

import pytest
from PIL import Image

from vlit_assets.core import lineage, warehouse
from vlit_assets.core.generated.stage import GenerationOptions
from vlit_assets.defs.generated import GeneratedConfig
from vlit_assets.runner import run_source
from vlit_assets.testing.openai_server import FakeOpenAIServer, Fault
from vlit_assets.testing.pipeline import (
    REPO,
    check_evaluation,
    materialization_metadata,
    pipeline_env,
)

STAGES = ("raw", "generated")
SECRET = "sk-test-never-store-this-0123456789"


def test_the_stage_config_has_the_fields_and_defaults_of_the_core_options() -> None:
    assert GenerationOptions(**GeneratedConfig().model_dump()) == GenerationOptions()


@pytest.mark.slow
def test_sample_generates_all_three_types_with_templates_only(tmp_path, monkeypatch):
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "sample", REPO / "data" / "sample", stages=STAGES)
        assert result.success
        assert check_evaluation(result, "generated_suite").passed
        types = dict(
            env.query(
                "SELECT instruction_type, count(*) FROM generated__conversations "
                "WHERE drop_reason IS NULL GROUP BY 1"
            )
        )
        assert set(types) == {"global", "negative", "region"} and min(types.values()) > 0
        assert env.scalar("SELECT count(DISTINCT generator) FROM generated__conversations") == 1
        metadata = materialization_metadata(result, "generated__conversations")
        assert metadata["generators"].startswith("template only")
        for (path,) in env.query(
            "SELECT image_path FROM generated__conversations WHERE instruction_type = 'region'"
        ):
            assert path.startswith(str(env.output_dir / "regions"))
            with Image.open(path) as im:
                im.load()


@pytest.mark.slow
def test_coco_mini_generates_all_types_and_passes_the_blocking_check(
    coco_mini, tmp_path, monkeypatch
):
    with pipeline_env(tmp_path, monkeypatch) as env:
        result = run_source(env.instance, "coco-mini", coco_mini, stages=STAGES)
        assert result.success
        assert check_evaluation(result, "generated_suite").passed
        n_types = env.scalar(
            "SELECT count(DISTINCT instruction_type) FROM generated__conversations "
            "WHERE drop_reason IS NULL"
        )
        assert n_types == 3


@pytest.mark.slow
def test_workers_config_splits_generation_inside_a_dagster_step(tmp_path, monkeypatch):
    # Helper processes are spawned from within the step; the rows must be the serial ones.
    rows = {}
    for workers in (1, 2):
        (tmp_path / f"w{workers}").mkdir()
        with pipeline_env(tmp_path / f"w{workers}", monkeypatch) as env:
            config = {"generated__conversations": {"workers": workers}}
            result = run_source(
                env.instance, "sample", REPO / "data" / "sample", stages=STAGES, op_config=config
            )
            assert result.success
            metadata = materialization_metadata(result, "generated__conversations")
            assert metadata["template_processes"] == workers
            rows[workers] = env.query(
                "SELECT conversation_id, turns, drop_reason FROM generated__conversations "
                "ORDER BY conversation_id"
            )
    assert rows[1] and rows[2] == rows[1]


@pytest.mark.slow
def test_self_instruct_through_the_asset_over_real_http(tmp_path, monkeypatch):
    """LLM rows join the template rows; faults become rows with reasons; the key is never stored."""
    with FakeOpenAIServer() as server, pipeline_env(tmp_path, monkeypatch) as env:
        server.add_faults("region", Fault.http(429, retry_after=0.2))
        server.add_faults(lambda body: "kitchen" in str(body).lower(), Fault.truncated())
        monkeypatch.setenv("VLIT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("VLIT_LLM_MODEL", "test-model")
        monkeypatch.setenv("VLIT_LLM_API_KEY", SECRET)
        config = {"generated__conversations": {"llm_types": ["global", "negative", "region"]}}
        result = run_source(
            env.instance, "sample", REPO / "data" / "sample", stages=STAGES, op_config=config
        )
        assert result.success
        rows = dict(
            env.query("SELECT generator, count(*) FROM generated__conversations GROUP BY 1")
        )
        assert rows["llm"] > 0 and rows["template"] > 0
        sent_first = len(server.log)
        assert sent_first >= rows["llm"]
        usable_llm = env.scalar(
            "SELECT count(*) FROM generated__conversations "
            "WHERE generator = 'llm' AND drop_reason IS NULL"
        )
        assert usable_llm > 0
        metadata = materialization_metadata(result, "generated__conversations")
        assert metadata["llm/requests"] == rows["llm"]
        assert metadata["llm/prompt_tokens"] > 0
        # The secret is in no table and no event of the run.
        with_secret = 0
        for (table,) in env.query("SELECT table_name FROM information_schema.tables"):
            for row in env.query(f'SELECT * FROM "{table}"'):
                with_secret += SECRET in str(row)
        assert with_secret == 0
        assert SECRET.encode() not in env.db_path.read_bytes()
        events = env.instance.all_logs(result.run_id)
        assert not any(SECRET in str(e) for e in events)

        # A rerun is served from the request cache: nothing completed is sent again.
        again = run_source(
            env.instance, "sample", REPO / "data" / "sample", stages=STAGES, op_config=config
        )
        assert again.success
        resent = len(server.log) - sent_first
        failed_before = env.scalar(
            "SELECT count(*) FROM generated__conversations "
            "WHERE generator = 'llm' AND drop_reason = 'llm_error'"
        )
        assert resent <= failed_before
        hits = materialization_metadata(again, "generated__conversations")["llm/cache_hits"]
        assert hits >= usable_llm


@pytest.mark.slow
def test_budget_stops_cleanly_and_keeps_what_was_done(tmp_path, monkeypatch):
    with FakeOpenAIServer() as server, pipeline_env(tmp_path, monkeypatch) as env:
        monkeypatch.setenv("VLIT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("VLIT_LLM_MODEL", "test-model")
        config = {"generated__conversations": {"max_requests": 5, "llm_types": ["global"]}}
        result = run_source(
            env.instance, "sample", REPO / "data" / "sample", stages=STAGES, op_config=config
        )
        assert result.success
        assert len(server.log) == 5
        done = env.scalar(
            "SELECT count(*) FROM generated__conversations "
            "WHERE generator = 'llm' AND drop_reason IS NULL"
        )
        stopped = env.scalar(
            "SELECT count(*) FROM generated__conversations "
            "WHERE generator = 'llm' AND drop_reason = 'llm_error' "
            "AND drop_detail = 'budget_exhausted'"
        )
        assert done == 5 and stopped == 24 - 5


LLM_QUICK = {"llm_types": ["global"], "llm_max_images": 3}


@pytest.mark.slow
def test_a_partial_llm_override_keeps_the_environment_endpoint(tmp_path, monkeypatch):
    """Run config that sets only concurrency and timeout_s keeps the endpoint and model that
    come from VLIT_LLM_*: the stage still calls the model instead of falling back to
    templates."""
    with FakeOpenAIServer(max_lifetime_s=120) as server, pipeline_env(tmp_path, monkeypatch) as env:
        monkeypatch.setenv("VLIT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("VLIT_LLM_MODEL", "env-model")
        monkeypatch.setenv("VLIT_LLM_TIMEOUT_S", "7")
        override = {"resources": {"llm": {"config": {"concurrency": "2", "max_retries": 1}}}}
        result = run_source(
            env.instance,
            "sample",
            REPO / "data" / "sample",
            stages=STAGES,
            op_config={"generated__conversations": LLM_QUICK},
            run_config=override,
        )
        assert result.success
        metadata = materialization_metadata(result, "generated__conversations")
        assert metadata["generators"] == "template + llm (env-model)"
        settings = metadata["llm/settings"]
        assert settings["base_url"] == server.base_url and settings["model"] == "env-model"
        assert settings["concurrency"] == 2 and settings["adaptive"] is False
        assert settings["max_retries"] == 1 and settings["timeout_s"] == 7.0  # env kept too
        assert len(server.log) == metadata["llm/requests"] == 3
        assert env.scalar("SELECT count(*) FROM generated__llm_requests") == 3


PROBE = """
import sys, time, duckdb
for _ in range(40):
    try:
        con = duckdb.connect(sys.argv[1])
    except duckdb.IOException:
        time.sleep(0.05)
        continue
    con.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
    con.execute("INSERT INTO probe VALUES (1)")
    con.close()
    sys.exit(0)
sys.exit(3)
"""


@pytest.mark.slow
def test_requests_in_flight_do_not_hold_the_write_lock(tmp_path, monkeypatch):
    """While a reply is being worked on, another process can open the warehouse and write."""
    import subprocess
    import sys

    from vlit_assets.testing.openai_server import default_responder

    probes: list[int] = []

    def responder(body: dict) -> str:
        if not probes:  # the first request: the stage is waiting on the model right now
            db = env.db_path
            probes.append(subprocess.run([sys.executable, "-c", PROBE, str(db)]).returncode)
        return default_responder(body)

    with pipeline_env(tmp_path, monkeypatch) as env:
        with FakeOpenAIServer(slots=1, responder=responder, max_lifetime_s=120) as server:
            monkeypatch.setenv("VLIT_LLM_BASE_URL", server.base_url)
            monkeypatch.setenv("VLIT_LLM_MODEL", "m")
            result = run_source(
                env.instance,
                "sample",
                REPO / "data" / "sample",
                stages=STAGES,
                op_config={"generated__conversations": LLM_QUICK},
            )
        assert result.success
        assert probes == [0]  # the other process got the lock and wrote
        assert env.scalar("SELECT count(*) FROM probe") == 1
        assert env.scalar("SELECT count(*) FROM llm__cache") == 3


@pytest.mark.slow
def test_every_llm_request_failing_warns_loudly_and_can_fail_the_stage(tmp_path, monkeypatch):
    with FakeOpenAIServer() as gone:
        dead_url = gone.base_url
    with pipeline_env(tmp_path, monkeypatch) as env:
        sample = REPO / "data" / "sample"
        monkeypatch.setenv("VLIT_LLM_BASE_URL", dead_url)
        monkeypatch.setenv("VLIT_LLM_MODEL", "m")
        monkeypatch.setenv("VLIT_LLM_MAX_RETRIES", "0")
        config = {"generated__conversations": LLM_QUICK}
        warned = run_source(env.instance, "sample", sample, stages=STAGES, op_config=config)
        assert warned.success  # by default a warning, not a failure
        metadata = materialization_metadata(warned, "generated__conversations")
        assert metadata["llm/warning"].startswith("LLM: EVERY 3 requests failed")
        assert metadata["llm/failed"] == 3 and metadata["llm/parsed"] == 0
        # counted per drop code and generator; the cause is the detail, counted apart
        assert metadata["drops/llm/llm_error"] == 3 and metadata["llm/no_reply/connection"] == 3
        assert not any(k.startswith("drops/template/") for k in metadata)
        warnings = [
            r.user_message
            for r in env.instance.all_logs(warned.run_id)
            if r.level >= 30 and "EVERY 3 requests failed" in r.user_message
        ]
        assert warnings
        sql = "SELECT conversation_id, run_id, drop_reason FROM generated__conversations ORDER BY 1"
        kept = env.query(sql)

        config = {"generated__conversations": LLM_QUICK | {"llm_fail_share": 0.5}}
        failed = run_source(env.instance, "sample", sample, stages=("generated",), op_config=config)
        assert not failed.success
        assert env.query(sql) == kept  # the failed stage wrote nothing


@pytest.mark.slow
def test_verification_pass_stores_verdicts_with_the_verifier_model(tmp_path, monkeypatch):
    with FakeOpenAIServer(max_lifetime_s=120) as server, pipeline_env(tmp_path, monkeypatch) as env:
        monkeypatch.setenv("VLIT_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("VLIT_LLM_MODEL", "writer")
        monkeypatch.setenv("VLIT_LLM_VERIFY_MODEL", "judge")
        config = {"generated__conversations": LLM_QUICK | {"llm_verify": True}}
        result = run_source(
            env.instance, "sample", REPO / "data" / "sample", stages=STAGES, op_config=config
        )
        assert result.success
        metadata = materialization_metadata(result, "generated__conversations")
        usable = env.scalar(
            "SELECT count(*) FROM generated__conversations "
            "WHERE generator = 'llm' AND drop_reason IS NULL"
        )
        rows = env.query(
            "SELECT verifier_model, verified_share, error FROM generated__llm_verification"
        )
        models = {m for (m,) in env.query("SELECT DISTINCT model FROM generated__conversations "
                                          "WHERE generator = 'llm'")}  # fmt: skip
        (cid,) = env.query("SELECT min(conversation_id) FROM generated__llm_verification")[0]
        with warehouse.connect(env.db_path, read_only=True) as con:
            chain = lineage.lineage(con, cid)
    assert chain["llm_request"]["attempts"] == 1 and chain["llm_request"]["error"] is None
    assert chain["verification"]["verifier_model"] == "judge"
    assert "[llm request]" in lineage.render(chain) and "[verification]" in lineage.render(chain)
    assert usable == 3 and len(rows) == usable
    assert {r[0] for r in rows} == {"judge"} and models == {"writer"}
    assert all(share == 1.0 and error is None for _, share, error in rows)
    assert metadata["verify/verified"] == 3 and metadata["verify/answers_contradicted"] == 0
    assert len(server.log) == 6  # three conversations, three verifications
