"""Run the per-source stages of one source through Dagster, in process (`vlit`, tests).

Every run is tagged with the process that owns it; runs of dead processes are failed and their
pool slots freed before a run starts and while it waits for a slot (`run_guard`).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.events import EVENT_TYPE_TO_DISPLAY_STRING
from dagster._utils.error import SerializableErrorInfo

from vlit_assets import run_guard
from vlit_assets.core.sources import check_source_name
from vlit_assets.core.vocab import FINAL_JOB, SOURCE_JOB, SOURCE_STAGES, SOURCES
from vlit_assets.definitions import defs

# Dagster wraps the user's exception in these; the cause the user needs is inside.
_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")


def error_chain(error: SerializableErrorInfo | None) -> list[SerializableErrorInfo]:
    """The error and its causes, outermost first."""
    chain: list[SerializableErrorInfo] = []
    while error is not None and len(chain) < 20:
        chain.append(error)
        error = error.cause or error.context
    return chain


def one_line_cause(error: SerializableErrorInfo | None) -> str:
    """What went wrong, in one line: the user's exception inside Dagster's wrappers."""
    chain = error_chain(error)
    if not chain:
        return "unknown error"
    inner = next((e for e in chain if not e.cls_name or e.cls_name not in _WRAPPERS), chain[-1])
    text = inner.message.strip().splitlines()[0] if inner.message.strip() else ""
    # Dagster's message reads "module.Class: text": the class is named once, below.
    prefix, sep, rest = text.partition(": ")
    if inner.cls_name and prefix.endswith(inner.cls_name):
        text = rest if sep else ""
    label = "" if inner.cls_name in (None, "Failure") else f"{inner.cls_name}: "
    line = f"{label}{text}".strip() or (inner.cls_name or "unknown error")
    return line if len(line) <= 400 else line[:397] + "..."


class _ShortFormatter(logging.Formatter):
    """One line per Dagster log record; an error becomes its one-line cause.

    The full record (with the stack trace) is still written to the instance's event log, where
    the UI shows it.
    """

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None)
        if not isinstance(meta, dict):
            return super().format(record)
        event = meta.get("dagster_event")
        parts = [
            self.formatTime(record, "%H:%M:%S"),
            record.levelname,
            (meta.get("run_id") or "")[:8],
            meta.get("step_key") or meta.get("job_name") or "",
            EVENT_TYPE_TO_DISPLAY_STRING.get(event.event_type, event.event_type_value)
            if event is not None
            else "",
            (meta.get("orig_message") or "").strip(),
        ]
        line = " - ".join(p for p in parts if p)
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        if isinstance(error, SerializableErrorInfo):
            line += f" {one_line_cause(error)}"
        return line


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="One line per event on stderr; stack traces stay in the run's event log.",
)
def short_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("vlit", level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ShortFormatter())
    logger.addHandler(handler)
    return logger


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    *,
    short_errors: bool,
    tags: Mapping[str, str],
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """``execute_in_process`` with an owner on the run, dead runs reaped first, a watched wait
    for pool slots, and the run failed and its slots freed if this process stops mid-run."""
    if short_errors:
        job = job.with_logger_defs({"console": short_console_logger})
    run_guard.install_quiet_wait()
    run_guard.reap_dead_runs(instance)
    run_id = str(uuid.uuid4())
    with run_guard.PoolWatch(instance, run_id):
        try:
            return job.execute_in_process(
                instance=instance,
                run_id=run_id,
                raise_on_error=False,
                tags={**tags, **run_guard.owner_tags()},
                **kwargs,
            )
        finally:
            run_guard.finish_orphaned(instance, run_id, "the process stopped before the run ended")


def ensure_partition(instance: dg.DagsterInstance, source: str) -> None:
    check_source_name(source)  # before it becomes a permanent partition key
    if not instance.has_dynamic_partition(SOURCES, source):
        instance.add_dynamic_partitions(SOURCES, [source])


def stage_selection(stages: Sequence[str]) -> list[dg.AssetKey]:
    job = defs.resolve_job_def(SOURCE_JOB)
    return [
        key
        for key in job.asset_layer.executable_asset_keys
        if defs.resolve_assets_def(key).get_asset_spec(key).group_name in stages
    ]


def run_source(
    instance: dg.DagsterInstance,
    source: str,
    root: Path | None,
    *,
    split: str | None = None,
    annotations_source: str | None = None,
    images_dir: Path | None = None,
    stages: Sequence[str] = SOURCE_STAGES,
    op_config: Mapping[str, Mapping[str, Any]] | None = None,
    tags: Mapping[str, str] | None = None,
    log_level: str = "INFO",
    run_config: Mapping[str, Any] | None = None,
    short_errors: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize ``stages`` (with their blocking checks) for the ``source`` partition.

    ``root`` registers the source's directory (None: use the registry or the conventions of
    the raw stage); ``op_config`` adds config for other stages' ops by op name; ``run_config``
    (resources, ops, ...) is merged over what these build, key by key. With ``short_errors``
    the console shows one line per event (errors as their cause).
    """
    ensure_partition(instance, source)
    raw_config: dict[str, Any] = {}
    if root is not None:
        raw_config["source_dir"] = str(Path(root).resolve())
    if split:
        raw_config["split"] = split
    if annotations_source:
        raw_config["annotations_source"] = annotations_source
    if images_dir is not None:
        raw_config["images_dir"] = str(Path(images_dir).resolve())
    ops: dict[str, Any] = {name: {"config": dict(cfg)} for name, cfg in (op_config or {}).items()}
    if "raw" in stages:
        ops.setdefault("raw", {"config": {}})["config"].update(raw_config)
    built = {"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}}
    return _execute(
        defs.resolve_job_def(SOURCE_JOB),
        instance,
        short_errors=short_errors,
        tags={"vlit/source": source, **(tags or {})},
        run_config=merge_config(built, run_config or {}),
        partition_key=source,
        asset_selection=stage_selection(stages),
    )


def merge_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in: nested mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def run_final(
    instance: dg.DagsterInstance,
    *,
    op_config: Mapping[str, Mapping[str, Any]] | None = None,
    tags: Mapping[str, str] | None = None,
    log_level: str = "INFO",
    short_errors: bool = False,
) -> dg.ExecuteInProcessResult:
    """Materialize the final stage (all sources) with its blocking suite, then the export."""
    ops = {name: {"config": dict(cfg)} for name, cfg in (op_config or {}).items()}
    return _execute(
        defs.resolve_job_def(FINAL_JOB),
        instance,
        short_errors=short_errors,
        tags=dict(tags or {}),
        run_config={"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}},
    )
