"""Concurrent partition runs in separate processes on one DuckDB file and one Dagster instance.

Each run is a `vlit run --stage raw` in a process of its own, as `dagster dev` launches runs. The
raw stage is enough: it writes seven per-source tables and two shared ones (meta__sources,
meta__check_results from its blocking check) through the same `warehouse.connect` and the same
`duckdb_writer` pool as every later stage; scoring would add minutes, not another write path.
Processes import everything first and then wait on a start file, so their runs really overlap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from vlit_assets.core import warehouse
from vlit_assets.core.schemas import TABLES
from vlit_assets.testing.pipeline import REPO

SAMPLE = REPO / "data" / "sample"
RAW_TABLES = tuple(t for t in TABLES.values() if t.partitioned and t.stage == "raw")
SHARED_TABLES = ("meta__sources", "meta__check_results")

# Imports first (seconds), then wait for the start file, then run the CLI: the runs start
# together instead of one finishing while the other is still importing.
CHILD = """
import sys, time
from pathlib import Path
import vlit_assets.cli as cli
import vlit_assets.runner
go = Path(sys.argv[1])
deadline = time.monotonic() + 120
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(cli.main(sys.argv[2:]))
"""


def _start(home: Path, db: Path, go: Path, source: Path, name: str, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "VLIT_DATA_DIR": str(home.parent / "data"),
        "VLIT_OUTPUT_DIR": str(home.parent / "out"),
        "VLIT_LLM_BASE_URL": "",
        "VLIT_LLM_MODEL": "",
        "VLIT_LLM_API_KEY": "",
    }
    args = ["run", "--source", str(source), "--name", name, "--db", str(db), "--stage", "raw"]
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(go), *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _init_home(home: Path) -> None:
    """Create the instance's storage once, before the runs: Dagster's SQLite storage is not safe
    to create from two processes at once (both stamp its schema version)."""
    home.mkdir(parents=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)):
        pass


def _run_together(tmp: Path, jobs: list[tuple[Path, Path, Path, str]], tag: str) -> None:
    """Start `vlit run` for each (home, db, source dir, name), release them at once, wait."""
    go = tmp / f"go-{tag}"
    procs = []
    for i, (home, db, source, name) in enumerate(jobs):
        log = tmp / f"{tag}-{i}-{name}.log"
        procs.append((log, _start(home, db, go, source, name, log)))
    time.sleep(0.5)  # most of the import time is spent while the children wait, not here
    go.touch()
    for log, proc in procs:
        code = proc.wait(timeout=600)
        assert code == 0, f"{log.name} exited {code}:\n{log.read_text()[-3000:]}"


def _rows(db: Path, sources: list[str]) -> dict[tuple[str, str], pl.DataFrame]:
    """(table, source) -> that source's rows, in key order."""
    out = {}
    with warehouse.connect(db, read_only=True) as con:
        for table in RAW_TABLES:
            frame = warehouse.read_source(con, table)
            for source in sources:
                out[(table.name, source)] = frame.filter(pl.col("source") == source).sort(
                    list(table.key)
                )
    return out


def _shared_counts(db: Path, source: str) -> dict[str, int]:
    with warehouse.connect(db, read_only=True) as con:
        return {
            name: con.execute(
                f'SELECT count(*) FROM "{name}" WHERE source = ?', [source]
            ).fetchone()[0]
            for name in SHARED_TABLES
        }


def _run_ids(rows: dict[tuple[str, str], pl.DataFrame], source: str) -> set[str]:
    return {
        run_id
        for (_, s), frame in rows.items()
        if s == source
        for run_id in frame["run_id"].unique().to_list()
    }


def _step_windows(home: Path, step: str) -> dict[str, tuple[float, float]]:
    """run_id -> (start, end) of ``step`` in that run, from the instance's event log."""
    windows = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in instance.get_runs():
            times = {}
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is not None and event.step_key == step:
                    times.setdefault(event.event_type_value, entry.timestamp)
            windows[run.run_id] = (times["STEP_START"], times["STEP_SUCCESS"])
    return windows


def _pool_waits(home: Path) -> int:
    """Engine events of steps that found the writer pool taken and waited for it."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return sum(
            1
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id)
            if "blocked by limit for pool duckdb_writer" in (entry.message or "")
        )


def _run_windows(home: Path) -> list[tuple[float, float]]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        out = []
        for run in instance.get_runs():
            stats = instance.get_run_stats(run.run_id)
            out.append((stats.start_time, stats.end_time))
        return out


@pytest.mark.slow
def test_two_processes_write_two_partitions_at_once_without_loss_or_duplicates(tmp_path):
    copy = tmp_path / "sample-copy"
    shutil.copytree(SAMPLE, copy)
    home, db = tmp_path / "shared" / "dagster_home", tmp_path / "shared" / "warehouse.duckdb"
    alone_home, alone_db = tmp_path / "alone" / "dagster_home", tmp_path / "alone" / "w.duckdb"
    _init_home(home)

    # Phase 1: a and b at once on one file and one instance; the baseline alone on its own.
    _run_together(
        tmp_path,
        [(home, db, SAMPLE, "a"), (home, db, copy, "b"), (alone_home, alone_db, SAMPLE, "a")],
        "first",
    )
    baseline = _rows(alone_db, ["a"])
    first = _rows(db, ["a", "b"])
    for table in RAW_TABLES:
        expected = baseline[(table.name, "a")].height
        assert first[(table.name, "a")].height == expected, table.name
        assert first[(table.name, "b")].height == expected, table.name
        assert (
            first[(table.name, "a")]
            .drop("run_id")
            .equals(baseline[(table.name, "a")].drop("run_id"))
        ), f"{table.name}: a written beside b differs from a written alone"
    assert baseline[("raw__images", "a")].height == 24
    for source in ("a", "b"):
        assert _shared_counts(db, source) == _shared_counts(alone_db, "a")
    run_a, run_b = _run_ids(first, "a"), _run_ids(first, "b")
    assert len(run_a) == len(run_b) == 1 and run_a != run_b

    # The runs overlapped, yet the pool let one writer step at a time at the file.
    (start_1, end_1), (start_2, end_2) = _run_windows(home)
    assert start_1 < end_2 and start_2 < end_1, "the two runs did not overlap"
    (w1, w2) = sorted(_step_windows(home, "raw").values())
    assert w1[1] <= w2[0], f"raw steps of the two runs overlapped: {w1} {w2}"
    assert _pool_waits(home) > 0, "no step waited for the duckdb_writer pool"

    # Phase 2: re-run b while a new partition c is being written.
    _run_together(tmp_path, [(home, db, copy, "b"), (home, db, SAMPLE, "c")], "second")
    second = _rows(db, ["a", "b", "c"])
    for table in RAW_TABLES:
        expected = baseline[(table.name, "a")].height
        assert second[(table.name, "b")].height == expected, table.name
        assert second[(table.name, "c")].height == expected, table.name
        assert second[(table.name, "a")].equals(first[(table.name, "a")]), table.name
        assert (
            second[(table.name, "b")].drop("run_id").equals(first[(table.name, "b")].drop("run_id"))
        ), table.name
    rerun_b = _run_ids(second, "b")
    assert len(rerun_b) == 1 and rerun_b != run_b, "b's rows were not all replaced by the re-run"
    assert _run_ids(second, "a") == run_a
    assert _shared_counts(db, "c") == _shared_counts(alone_db, "a")
    assert _shared_counts(db, "b")["meta__sources"] == 1
