"""kill -9 of a `vlit run` in the middle of a stage, then a re-run in the same DAGSTER_HOME.

The killed process held the `duckdb_writer` pool slot and left its run STARTED; before the fix
every later run waited for that slot forever. The child pauses right after writing one table of
the stage (inside the stage's transaction) and is killed there, so the kill always lands while
the slot is held and the stage's writes are half done. The re-run must finish and give exactly
the rows of an undisturbed run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from vlit_assets import run_guard
from vlit_assets.core import warehouse
from vlit_assets.core.schemas import TABLES
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.run_guard import holders
from vlit_assets.runner import run_final, run_source
from vlit_assets.testing.pipeline import REPO

SAMPLE = REPO / "data" / "sample"
RUN_TIMEOUT_S = 600  # a re-run that hangs fails the test instead of hanging it

# `vlit run` with one write made to stop: after writing table argv[1], it records its pid in
# argv[2] and sleeps until it is killed.
CHILD = """
import os, sys, time
from pathlib import Path
from vlit_assets.core import warehouse
import vlit_assets.cli as cli
pause_at, marker = sys.argv[1], Path(sys.argv[2])
for helper in ("replace_source", "replace_all"):
    def hold(con, table, *args, _real=getattr(warehouse, helper)):
        written = _real(con, table, *args)
        if (table if isinstance(table, str) else table.name) == pause_at:
            marker.write_text(str(os.getpid()))
            time.sleep(3600)
        return written
    setattr(warehouse, helper, hold)
sys.exit(cli.main(sys.argv[3:]))
"""

# Columns that name the run or the moment, and so differ between any two runs.
VOLATILE = ("run_id", "scored_run_id", "final_run_id", "created_at", "recorded_at",
            "evaluated_at", "registered_at", "latency_ms")  # fmt: skip
# Caches, and histories that keep one row per run on purpose (the killed run's checks too).
NOT_COMPARED = ("llm__cache", "embed__cache", "meta__check_results", "meta__dataset_metrics")
COMPARED = [name for name in TABLES if name not in NOT_COMPARED]


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DAGSTER_HOME": str(tmp / "home"),
        "VLIT_DB_PATH": str(tmp / "warehouse.duckdb"),
        "VLIT_DATA_DIR": str(REPO / "data"),
        "VLIT_OUTPUT_DIR": str(tmp / "out"),
        "VLIT_LLM_BASE_URL": "",
        "VLIT_LLM_MODEL": "",
        "VLIT_LLM_API_KEY": "",
    }


def _snapshot(db: Path, out_dir: Path) -> dict[str, pl.DataFrame]:
    """Every table without its volatile columns, output paths made relative, in a fixed order."""
    snap = {}
    with warehouse.connect(db, read_only=True) as con:
        for name in COMPARED:
            table = TABLES[name]
            frame = warehouse.read_source(con, table)
            frame = frame.drop([c for c in VOLATILE if c in frame.columns])
            if name == "final__export_files":
                # The files hold absolute output paths, so their hashes differ between the two
                # output folders; the content-addressed version and the file list must match.
                frame = frame.drop("sha256")
            frame = frame.with_columns(
                pl.col(pl.String).str.replace_all(str(out_dir), "<out>", literal=True),
                # Sums over unordered groups differ in the last bits from run to run.
                pl.col(pl.Float64).round(9),
            )
            if "report" in frame.columns:  # JSON with such sums inside
                frame = frame.with_columns(
                    pl.col("report").map_elements(_rounded_json, return_dtype=pl.String)
                )
            snap[name] = frame.sort([k for k in table.key if k in frame.columns], nulls_last=True)
    return snap


def _rounded_json(text: str) -> str:
    def walk(value):
        if isinstance(value, float):
            return round(value, 9)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return json.dumps(walk(json.loads(text)), sort_keys=True)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> dict[str, pl.DataFrame]:
    """The tables after one undisturbed run of the sample (in process, its own home and DB)."""
    tmp = tmp_path_factory.mktemp("undisturbed")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _env(tmp).items():
            if key.startswith("VLIT_"):
                mp.setenv(key, value)
        (tmp / "home").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp / "home")) as instance:
            assert run_source(instance, "sample", SAMPLE).success
            assert run_final(instance).success
    return _snapshot(tmp / "warehouse.duckdb", tmp / "out")


def _vlit(tmp: Path, log: Path, *args: str, pause_at: str | None = None) -> subprocess.Popen:
    if pause_at:
        command = [sys.executable, "-c", CHILD, pause_at, str(tmp / "paused"), *args]
    else:
        command = [sys.executable, "-m", "vlit_assets.cli", *args]
    with log.open("w") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=_env(tmp), stdout=out, stderr=subprocess.STDOUT
        )


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"child exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"child never paused:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "pause_at",
    [
        "raw__objects",  # a source run in raw: images and captions written, five tables to go
        "final__conversations",  # the final run: decisions and kept rows written, report not yet
    ],
)
def test_a_rerun_after_kill_9_finishes_with_the_undisturbed_rows(tmp_path, undisturbed, pause_at):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")

    killed_log = tmp_path / "killed.log"
    child = _vlit(tmp_path, killed_log, "run", pause_at=pause_at)
    try:
        _wait_for(tmp_path / "paused", child, killed_log)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (dead,) = [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
        held, _ = holders(instance, WRITER_POOL)
        assert [h.run_id for h in held] == [dead.run_id], "the killed run held no pool slot"

    rerun_log = tmp_path / "rerun.log"
    rerun = _vlit(tmp_path, rerun_log, "run")
    try:
        code = rerun.wait(timeout=RUN_TIMEOUT_S)
    finally:
        rerun.kill()
    output = rerun_log.read_text()
    assert code == 0, output[-4000:]
    assert f"run {dead.run_id[:8]}" in output and "died without finishing" in output

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert holders(instance, WRITER_POOL) == ([], [])
        unfinished = [r.run_id for r in instance.get_runs() if not r.is_finished]
        assert unfinished == []

    after = _snapshot(tmp_path / "warehouse.duckdb", tmp_path / "out")
    differ = [name for name, frame in undisturbed.items() if not after[name].equals(frame)]
    assert differ == [], f"tables that differ from the undisturbed run: {differ}"


def _wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"never printed {text!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_run_waiting_for_a_slot_stops_on_sigterm_and_goes_on_when_the_holder_dies(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    # The holder: a live process owning a run that holds the writer slot.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            held_by = str(uuid.uuid4())
            owner = {run_guard.PID_TAG: str(holder.pid), run_guard.HOST_TAG: socket.gethostname()}
            instance.add_run(
                dg.DagsterRun(
                    job_name="source_job",
                    run_id=held_by,
                    status=dg.DagsterRunStatus.STARTED,
                    tags=owner,
                )
            )
            storage = instance.event_log_storage
            storage.initialize_concurrency_limit_to_default(WRITER_POOL)
            assert storage.claim_concurrency_slot(WRITER_POOL, held_by, "scored").is_claimed

        # 1. A run waiting for the slot says who holds it, and stops on SIGTERM.
        log = tmp_path / "stopped.log"
        waiting = _vlit(tmp_path, log, "run", "--stage", "raw")
        try:
            _wait_for_text(log, f"held by run {held_by[:8]} step scored", waiting)
            waiting.send_signal(signal.SIGTERM)
            code = waiting.wait(timeout=120)
        finally:
            waiting.kill()
        assert code == 130, log.read_text()[-3000:]
        assert "stopped by a signal" in log.read_text()
        assert "Traceback" not in log.read_text()
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (stopped,) = [r for r in instance.get_runs() if r.run_id != held_by]
            assert stopped.status == dg.DagsterRunStatus.FAILURE
            assert holders(instance, WRITER_POOL) == ([run_guard.Holder(held_by, "scored")], [])

        # 2. The holder dies while another run waits: that run reaps it and finishes.
        log = tmp_path / "proceeds.log"
        waiting = _vlit(tmp_path, log, "run", "--stage", "raw")
        try:
            _wait_for_text(log, f"held by run {held_by[:8]} step scored", waiting)
            holder.kill()
            holder.wait()
            code = waiting.wait(timeout=RUN_TIMEOUT_S)
        finally:
            waiting.kill()
        assert code == 0, log.read_text()[-3000:]
        assert (
            f"run {held_by[:8]}" in log.read_text() and "died without finishing" in log.read_text()
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_run_by_id(held_by).status == dg.DagsterRunStatus.FAILURE
            assert holders(instance, WRITER_POOL) == ([], [])
    finally:
        holder.kill()
        holder.wait()
