"""Run the per-source stages of one source through Dagster, in process (`vlit`, tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from vlit_assets.core.sources import check_source_name
from vlit_assets.definitions import SOURCE_STAGES, defs


def ensure_partition(instance: dg.DagsterInstance, source: str) -> None:
    check_source_name(source)  # before it becomes a permanent partition key
    if not instance.has_dynamic_partition("sources", source):
        instance.add_dynamic_partitions("sources", [source])


def stage_selection(stages: Sequence[str]) -> list[dg.AssetKey]:
    job = defs.resolve_job_def("source_job")
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
) -> dg.ExecuteInProcessResult:
    """Materialize ``stages`` (with their blocking checks) for the ``source`` partition.

    ``root`` registers the source's directory (None: use the registry or the conventions of
    the raw stage); ``op_config`` adds config for other stages' ops by op name; ``run_config``
    (resources, ops, ...) is merged over what these build, key by key.
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
    return defs.resolve_job_def("source_job").execute_in_process(
        run_config=merge_config(built, run_config or {}),
        instance=instance,
        partition_key=source,
        asset_selection=stage_selection(stages),
        raise_on_error=False,
        tags={"vlit/source": source, **(tags or {})},
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
) -> dg.ExecuteInProcessResult:
    """Materialize the final stage (all sources) with its blocking suite, then the export."""
    ops = {name: {"config": dict(cfg)} for name, cfg in (op_config or {}).items()}
    return defs.resolve_job_def("final_job").execute_in_process(
        run_config={"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance,
        raise_on_error=False,
        tags=dict(tags or {}),
    )
