"""Runs owned by dead processes: detected, marked failed, their pool slots freed; a quiet wait."""

from __future__ import annotations

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
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._utils.interrupts import capture_interrupts

from vlit_assets import run_guard
from vlit_assets.core.vocab import WRITER_POOL
from vlit_assets.testing.pipeline import REPO


@pytest.fixture
def instance(tmp_path: Path):
    """A persistent instance with the project's dagster.yaml (pool limit 1)."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run(instance, tags: dict[str, str], status=dg.DagsterRunStatus.STARTED) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="source_job", run_id=run_id, status=status, tags=tags))
    return run_id


def _hold(instance, run_id: str, step: str = "raw") -> None:
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(WRITER_POOL)
    assert storage.claim_concurrency_slot(WRITER_POOL, run_id, step).is_claimed


def _owner(pid: int, host: str | None = None) -> dict[str, str]:
    return {run_guard.PID_TAG: str(pid), run_guard.HOST_TAG: host or socket.gethostname()}


def test_process_alive_tells_running_exited_zombie_and_recycled_processes():
    assert run_guard.process_alive(os.getpid())
    assert not run_guard.process_alive(_dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while run_guard._proc_stat(zombie.pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.05)  # it exits at once; nobody waits for it, so it stays a zombie
        assert not run_guard.process_alive(zombie.pid)
    finally:
        zombie.wait()
    tags = run_guard.owner_tags()
    assert run_guard.process_alive(os.getpid(), tags[run_guard.PID_START_TAG])
    assert not run_guard.process_alive(os.getpid(), "1")  # same pid, another process


def test_a_dead_owner_is_failed_and_its_slot_freed_others_are_left_alone(instance):
    dead = _run(instance, _owner(_dead_pid()))
    alive = _run(instance, _owner(os.getpid()))
    elsewhere = _run(instance, _owner(_dead_pid(), host="another-host"))
    untagged = _run(instance, {})
    ended = _run(instance, _owner(os.getpid()), status=dg.DagsterRunStatus.SUCCESS)
    _hold(instance, dead)
    said: list[str] = []

    assert run_guard.reap_dead_runs(instance, say=said.append) == [dead]

    run = instance.get_run_by_id(dead)
    assert run.status == dg.DagsterRunStatus.FAILURE
    (failure,) = instance.all_logs(dead, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "is gone" in failure.dagster_event.message
    assert run_guard.holders(instance, WRITER_POOL) == ([], [])
    assert len(said) == 1 and dead[:8] in said[0]
    for run_id in (alive, elsewhere, untagged):
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    # A slot left behind by a run that has ended is freed too, whoever launched it.
    _hold(instance, ended)
    assert run_guard.reap_dead_runs(instance, say=said.append) == []
    assert run_guard.holders(instance, WRITER_POOL) == ([], [])
    # A live owner keeps its slot.
    _hold(instance, alive)
    run_guard.reap_dead_runs(instance, say=said.append)
    assert run_guard.holders(instance, WRITER_POOL)[0] == [run_guard.Holder(alive, "raw")]


def test_a_waiting_run_is_told_who_holds_the_pool_and_a_dead_holder_is_reaped(instance):
    holder = _run(instance, _owner(os.getpid()))
    _hold(instance, holder, "scored__conversations")
    waiter = _run(instance, _owner(os.getpid()))
    assert not instance.event_log_storage.claim_concurrency_slot(
        WRITER_POOL, waiter, "raw"
    ).is_claimed
    said: list[str] = []
    watch = run_guard.PoolWatch(instance, waiter, say=said.append)

    watch.look()
    watch.look()  # same holder: said once
    assert len(said) == 1
    assert f"run {holder[:8]} step scored__conversations" in said[0]
    assert "raw waiting for pool 'duckdb_writer'" in said[0] and "running" in said[0]

    # The holder's process dies: the next look fails that run and hands the slot over.
    instance.add_run_tags(holder, {run_guard.PID_TAG: str(_dead_pid())})
    watch.look()
    assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.claim_concurrency_slot(WRITER_POOL, waiter, "raw").is_claimed


class _Waiting:
    """What ActiveExecution.sleep_til_ready needs: Dagster's (buggy) interval while a step
    waits for a slot, which is never above zero."""

    def sleep_interval(self) -> float:
        return 0.0


def test_the_wait_for_a_slot_sleeps_and_stops_on_a_signal(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(run_guard.time, "sleep", slept.append)
    run_guard._sleep_til_ready(_Waiting())
    assert slept == [run_guard.WAIT_TICK_S]

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with capture_interrupts():  # as during a Dagster execution: a signal only sets a flag
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(DagsterExecutionInterruptedError):
                run_guard._sleep_til_ready(_Waiting())
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert slept == [run_guard.WAIT_TICK_S]
