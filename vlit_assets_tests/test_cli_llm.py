"""`vlit run` LLM settings: flags over --config over VLIT_LLM_* variables, and the summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vlit_assets import cli
from vlit_assets.testing.openai_server import FakeOpenAIServer
from vlit_assets.testing.pipeline import REPO


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["run", *argv])


def test_flags_beat_the_config_file_which_beats_the_variables(tmp_path: Path) -> None:
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "ops:\n  generated__conversations:\n    config:\n      llm_per_image: 2\n"
        "      max_requests: 50\n"
        "resources:\n  llm:\n    config:\n      timeout_s: 30\n"
    )
    environ = {"VLIT_LLM_BUDGET_REQUESTS": "10", "VLIT_LLM_TYPES": "global,region",
               "VLIT_LLM_MAX_IMAGES": "4"}  # fmt: skip
    args = _args("--config", str(run_yaml), "--llm-budget-requests", "7",
                 "--llm-concurrency", "3", "--llm-deadline", "600")  # fmt: skip
    config = cli.llm_run_config(args, ("raw", "generated"), environ)
    op = config["ops"]["generated__conversations"]["config"]
    assert op["max_requests"] == 7  # flag over file over variable
    assert op["llm_per_image"] == 2  # file
    assert op["llm_types"] == ["global", "region"] and op["llm_max_images"] == 4  # variables
    resource = config["resources"]["llm"]["config"]
    assert resource == {"timeout_s": 30, "concurrency": "3", "deadline_s": 600.0}
    # No generated stage: nothing for its op or the LLM resource.
    assert cli.llm_run_config(_args(), ("raw",), environ) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "top level must be a mapping"), ("ops: [\n", "not valid YAML")],
)
def test_a_bad_config_file_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(text)
    with pytest.raises(cli.ConfigError, match=message):
        cli.llm_run_config(_args("--config", str(run_yaml)), ("generated",), {})


def test_a_bad_variable_names_itself() -> None:
    with pytest.raises(cli.ConfigError, match=r"\$VLIT_LLM_TYPES='global,pictures'"):
        cli.llm_run_config(_args(), ("generated",), {"VLIT_LLM_TYPES": "global,pictures"})


@pytest.mark.parametrize("flag", [["--llm-concurrency", "0"], ["--llm-fail-share", "2"]])
def test_bad_flags_are_refused_by_the_parser(flag: list[str]) -> None:
    with pytest.raises(SystemExit):
        _args(*flag)


def test_vlit_run_with_llm_flags_prints_progress_and_an_llm_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    for key in ("VLIT_LLM_BASE_URL", "VLIT_LLM_MODEL", "VLIT_LLM_API_KEY"):
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLIT_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("VLIT_OUTPUT_DIR", str(tmp_path / "out"))
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "ops:\n  generated__conversations:\n    config:\n      llm_progress_every_s: 0.0\n"
    )
    with FakeOpenAIServer(max_lifetime_s=120) as server:
        code = cli.main(["run", "--db", str(tmp_path / "wh.duckdb"), "--stage", "generated",
                         "--llm-url", server.base_url, "--llm-model", "flag-model",
                         "--llm-types", "global", "--llm-max-images", "2",
                         "--config", str(run_yaml)])  # fmt: skip
        sent = len(server.log)
    out, err = capfd.readouterr()
    assert code == 0 and sent == 2
    assert "LLM: template + llm (flag-model)" in out
    planned = next(line for line in out.splitlines() if "requests planned" in line)
    assert planned.split()[-1] == "2"
    assert "llm 2/2 (100%)" in out + err  # the progress line, through Dagster's logger


def test_the_llm_summary_shows_verification_and_the_warning() -> None:
    meta = {
        "generators": "template + llm (m)", "llm/requests": 4, "llm/sent": 4, "llm/attempts": 5,
        "llm/retries": 1, "llm/cache_hits": 0, "llm/parsed": 0, "llm/repaired": 0,
        "llm/prompt_tokens": 0, "llm/completion_tokens": 0, "llm/cost_usd": 0.0,
        "drops/llm/llm_error": 4, "llm/no_reply/connection": 4,
        "llm/warning": "LLM: EVERY 4 requests failed (...)",
        "verify/requests": 2, "verify/verified": 1, "verify/answers_supported": 2,
        "verify/answers_contradicted": 1, "verify/answers_unknown": 0,
        "verify/errors/llm_parse:no_json": 1,
    }  # fmt: skip
    text = "\n".join(cli.llm_summary_lines(meta))
    assert "dropped: llm_error" in text and "no reply: connection" in text
    assert "answers contradicted" in text
    assert "verification failed: llm_parse:no_json" in text
    assert text.rstrip().endswith("!!! WARNING: LLM: EVERY 4 requests failed (...)")
    assert cli.llm_summary_lines({"generators": "template only (use_llm is off)"})[-1] == (
        "LLM: not used (template only (use_llm is off))"
    )
