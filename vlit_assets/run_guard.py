"""Runs that `vlit` executes in its own process: who owns them, and cleaning up after dead ones.

A run executed in process holds a slot of the `duckdb_writer` pool in the Dagster instance while
a writing step runs. If its process is killed (kill -9, OOM, a closed laptop), nothing frees the
slot and the run stays STARTED, so every later run waits for it forever. So each run is tagged
with its owner (process id, process start time, host); before a run and while one waits for a
slot, runs of this host whose process is gone are marked failed and their slots freed, as are
slots still held by runs that have already ended.

Dagster's in-process wait for a slot (1.13) never sleeps, since its interval to the next claim
check is ``min(0, ...)``, and it ignores interrupts, which it only checks inside steps.
``install_quiet_wait`` replaces that one method so the wait sleeps and stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.execution.plan.active import ActiveExecution
from dagster._utils.interrupts import check_captured_interrupt

from vlit_assets.core.vocab import WRITER_POOL

PID_TAG = "vlit/pid"
PID_START_TAG = "vlit/pid_start"  # guards against a recycled process id
HOST_TAG = "vlit/host"

# Statuses of a run that has not ended; QUEUED runs wait in the daemon's queue and own nothing.
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

WAIT_TICK_S = 0.5  # longest sleep between two looks at the pool (and at a pending signal)
WATCH_EVERY_S = 2.0  # how often a waiting run looks for dead holders and reports who holds

Say = Callable[[str], None]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None when unknown."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run it executes."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    start = _process_start(pid)
    if start:
        tags[PID_START_TAG] = start
    return tags


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (and is the same process, when ``start`` is given)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the signal test is all we have
    if stat[0] in ("Z", "X"):  # a zombie has exited; only its exit status is left
        return False
    return start is None or stat[19] == start


def owner_alive(run: dg.DagsterRun) -> bool | None:
    """True/False for a run owned by a process of this host; None when not ours to judge."""
    pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
    if not pid or not pid.isdigit() or host != socket.gethostname():
        return None
    return process_alive(int(pid), run.tags.get(PID_START_TAG))


@contextmanager
def _reap_lock(instance: dg.DagsterInstance) -> Iterator[None]:
    """One reaper at a time per instance directory, so a dead run is failed once."""
    root = instance.root_directory if instance.is_persistent else None
    if root is None:
        yield
        return
    with (Path(root) / ".vlit-reap.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def reap_dead_runs(instance: dg.DagsterInstance, *, say: Say = _say) -> list[str]:
    """Fail the unfinished runs of this host whose process is gone; free what ended runs hold.

    Returns the ids of the runs marked failed. Runs launched by other hosts or by Dagster's own
    launcher are never failed here (their owner cannot be checked); only their leftover slots
    are freed, and only once they have ended.
    """
    storage = instance.event_log_storage
    reaped = []
    with _reap_lock(instance):
        records = instance.get_run_records(
            dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: socket.gethostname()})
        )
        for record in records:
            run = record.dagster_run
            if owner_alive(run) is not False:
                continue
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.is_finished:
                continue
            reason = (
                f"vlit: the process that ran this run (pid {run.tags[PID_TAG]} on "
                f"{run.tags[HOST_TAG]}) is gone: killed or crashed. Marked failed, and its "
                f"pool slots freed, by pid {os.getpid()}."
            )
            instance.report_run_failed(
                current,
                message=reason,
                job_failure_data=JobFailureData(
                    error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION
                ),
            )
            storage.free_concurrency_slots_for_run(run.run_id)
            say(
                f"vlit: run {run.run_id[:8]} ({_describe_run(run)}) died without finishing; "
                "marked it failed and freed its pool slots"
            )
            reaped.append(run.run_id)
        if storage.supports_global_concurrency_limits:
            for run_id in storage.get_concurrency_run_ids():
                holder = instance.get_run_by_id(run_id)
                if holder is None or holder.is_finished:
                    storage.free_concurrency_slots_for_run(run_id)
    return reaped


def _describe_run(run: dg.DagsterRun | None) -> str:
    if run is None:
        return "a run no longer in the instance"
    parts = [run.job_name]
    if run.tags.get("vlit/source"):
        parts.append(f"source {run.tags['vlit/source']!r}")
    if run.tags.get(PID_TAG):
        alive = owner_alive(run)
        state = {True: "running", False: "process gone", None: "owner not checkable"}[alive]
        parts.append(f"pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')}, {state}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Holder:
    run_id: str
    step_key: str


def holders(instance: dg.DagsterInstance, pool: str) -> tuple[list[Holder], list[str]]:
    """Who holds ``pool`` (claimed slots and queue places already given a slot), and the steps
    of each run still waiting, as ``run_id:step`` strings."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    held = [Holder(s.run_id, s.step_key) for s in info.claimed_slots]
    claimed = {(h.run_id, h.step_key) for h in held}
    held += [
        Holder(p.run_id, p.step_key)
        for p in info.pending_steps
        if p.assigned_timestamp is not None and (p.run_id, p.step_key) not in claimed
    ]
    waiting = [
        f"{p.run_id}:{p.step_key}" for p in info.pending_steps if p.assigned_timestamp is None
    ]
    return held, waiting


class PoolWatch:
    """While ``run_id`` waits for a pool slot: say who holds it, and reap dead holders.

    Runs in a daemon thread beside the in-process execution; every look is a couple of reads
    of the instance's storage, every ``WATCH_EVERY_S`` seconds.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run_id: str,
        *,
        pools: tuple[str, ...] = (WRITER_POOL,),
        say: Say = _say,
        every_s: float = WATCH_EVERY_S,
    ):
        self.instance = instance
        self.run_id = run_id
        self.pools = pools
        self.say = say
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlit-pool-watch", daemon=True)
        self._last: dict[str, tuple[Holder, ...]] = {}
        self._failed_once = False

    def __enter__(self) -> PoolWatch:
        if self.instance.event_log_storage.supports_global_concurrency_limits:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.look()
            except Exception as exc:  # a busy SQLite file, say: look again next time
                if not self._failed_once:
                    self.say(f"vlit: could not read the pool state ({exc}); retrying")
                    self._failed_once = True

    def _state(self, pool: str) -> tuple[list[Holder], list[str]]:
        """Other runs' holds on ``pool``, and the steps of this run still waiting for it."""
        held, waiting = holders(self.instance, pool)
        mine = [w.split(":", 1)[1] for w in waiting if w.startswith(f"{self.run_id}:")]
        return [h for h in held if h.run_id != self.run_id], mine

    def look(self) -> None:
        for pool in self.pools:
            held, mine = self._state(pool)
            if mine and reap_dead_runs(self.instance, say=self.say):
                held, mine = self._state(pool)
            if not mine:
                self._last.pop(pool, None)
                continue
            key = tuple(sorted(held, key=lambda h: (h.run_id, h.step_key)))
            if self._last.get(pool) == key:
                continue
            self._last[pool] = key
            by = "; ".join(
                f"run {h.run_id[:8]} step {h.step_key} "
                f"({_describe_run(self.instance.get_run_by_id(h.run_id))})"
                for h in key
            )
            self.say(
                f"vlit: {', '.join(mine)} waiting for pool {pool!r}, held by "
                + (by or "nobody (the slot is being handed over)")
            )


def _sleep_til_ready(self: ActiveExecution) -> None:
    """Dagster's wait between looks at the pool, made to sleep and to honour interrupts.

    A signal during execution only sets a flag (Dagster's ``capture_interrupts``); steps check
    it, the wait for a slot never did. Raising here ends the run as interrupted: Dagster marks
    it failed and gives back the run's place in the pool queue.
    """
    if check_captured_interrupt():
        raise DagsterExecutionInterruptedError("stopped by a signal while waiting for a pool slot")
    amount = self.sleep_interval()
    time.sleep(min(amount, WAIT_TICK_S) if amount > 0 else WAIT_TICK_S)


def install_quiet_wait() -> None:
    """Replace Dagster's spinning wait for a slot with ours (idempotent)."""
    ActiveExecution.sleep_til_ready = _sleep_til_ready  # type: ignore[method-assign]


def finish_orphaned(instance: dg.DagsterInstance, run_id: str, why: str) -> None:
    """After ``run_id`` returned or raised in this process: fail it if it never ended, and
    give back any slot it still holds."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_failed(
            run,
            message=f"vlit: {why}",
            job_failure_data=JobFailureData(
                error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION
            ),
        )
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run ended because the process was told to stop (SIGINT/SIGTERM)."""
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            data = event.event_specific_data
            if getattr(data, "failure_reason", None) == RunFailureReason.UNEXPECTED_TERMINATION:
                return True
    return False
