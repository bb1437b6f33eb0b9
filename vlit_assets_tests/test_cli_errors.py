"""`vlit run` answers a user error with one line and its own exit code, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlit_assets import cli
from vlit_assets.core import warehouse
from vlit_assets.testing.pipeline import REPO

SAMPLE = REPO / "data" / "sample"


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Path:
    """Every variable `vlit` reads, pointing under tmp_path (restored afterwards)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLIT_DB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("VLIT_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("VLIT_OUTPUT_DIR", str(tmp_path / "out"))
    for key in ("VLIT_LLM_BASE_URL", "VLIT_LLM_MODEL", "VLIT_LLM_API_KEY"):
        monkeypatch.setenv(key, "")
    return tmp_path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vlit: ")
    return lines[0]


def test_an_invalid_name_is_one_line_and_exit_3(env, capsys):
    assert cli.main(["run", "--source", str(SAMPLE), "--name", "Bad Name!"]) == 3
    assert "--name" in _one_line_error(capsys)


def test_a_folder_name_without_a_usable_source_name_is_one_line_and_exit_4(env, capsys):
    folder = env / "!!!"
    folder.mkdir()
    assert cli.main(["run", "--source", str(folder)]) == 4
    assert "pass one with --name" in _one_line_error(capsys)


def test_a_missing_source_is_one_line_and_exit_5(env, capsys):
    assert cli.main(["run", "--source", str(env / "no-such-folder")]) == 5
    assert "no such directory" in _one_line_error(capsys)


def test_a_missing_warehouse_for_lineage_is_one_line_and_exit_5(env, capsys):
    assert cli.main(["lineage", "abc"]) == 5
    assert "no warehouse" in _one_line_error(capsys)


HOLD_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_warehouse_locked_by_another_process_is_exit_6_without_a_traceback(
    env, capsys, monkeypatch
):
    real_connect = warehouse.connect
    # Wait 1 s for the lock instead of 120 s; the lock and the error are real.
    monkeypatch.setattr(
        warehouse, "connect", lambda path, **kw: real_connect(path, **{**kw, "wait_s": 1.0})
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(env / "warehouse.duckdb")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = cli.main(["run", "--stage", "raw"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    sys.__stderr__.write(err)
    assert code == 6, err
    assert "Traceback" not in err and "Stack Trace" not in err
    assert "WarehouseBusy" in err or "warehouse is busy" in err


def test_a_failed_step_shows_its_cause_in_one_line_and_keeps_the_trace_in_the_event_log(
    env, capsys
):
    import dagster as dg

    bad = env / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "val2017").mkdir()
    (bad / "annotations" / "captions_val2017.json").write_text('{"images": [')
    assert cli.main(["run", "--source", str(bad), "--stage", "raw"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Stack Trace" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("step raw failed:")]
    assert "captions_val2017.json: not valid JSON" in line
    with dg.DagsterInstance.from_config(str(env / "home")) as instance:
        (run,) = instance.get_runs()
        (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        trace = failure.dagster_event.step_failure_data.error.to_string()
    assert "Stack Trace" in trace or "File " in trace  # the full error stays in the run's log


def test_run_help_documents_every_exit_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    for code in cli.Exit:
        assert f"\n  {int(code):<4} " in out, code


def test_sigterm_outside_a_run_stops_like_ctrl_c_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), cli._stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) == before
