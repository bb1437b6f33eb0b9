"""The one place that wires assets, checks, resources, jobs, schedules and sensors."""

from __future__ import annotations

import dagster as dg

from vlit_assets.checks.asset_checks import build_asset_checks
from vlit_assets.core.vocab import FINAL_JOB, SOURCE_JOB, SOURCE_STAGES, WRITER_POOL
from vlit_assets.defs import automation, final, generated, raw, scored
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import (
    ComputeResource,
    EmbedderResource,
    LLMResource,
    ProjectPaths,
    WarehouseResource,
)

source_job = dg.define_asset_job(
    SOURCE_JOB,
    selection=dg.AssetSelection.groups(*SOURCE_STAGES),
    partitions_def=sources_partitions,
    description="Every per-source stage for one source partition, with their blocking checks.",
)

final_job = dg.define_asset_job(
    FINAL_JOB,
    selection=dg.AssetSelection.groups("final"),
    description="Decisions, split and export across every source, behind the final suite.",
)

final_schedule = dg.ScheduleDefinition(
    name="final_nightly",
    job=final_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuild the final split and export from every source's scores each night.",
)

defs = dg.Definitions(
    assets=[
        raw.raw,
        generated.generated__conversations,
        scored.scored__conversations,
        final.final,
        final.final__export,
    ],
    asset_checks=build_asset_checks(sources_partitions=sources_partitions, pool=WRITER_POOL),
    jobs=[source_job, final_job],
    schedules=[final_schedule],
    sensors=[automation.incoming_batches_sensor],
    resources={
        # Paths and secrets are read when a run starts, never at import (see .env.example).
        "warehouse_db": WarehouseResource(db_path=dg.EnvVar("VLIT_DB_PATH")),
        "paths": ProjectPaths(
            data_dir=dg.EnvVar("VLIT_DATA_DIR"), output_dir=dg.EnvVar("VLIT_OUTPUT_DIR")
        ),
        "embedder": EmbedderResource(),
        # Heavy per-row work on a Ray cluster when $VLIT_RAY_ADDRESS names one (docs/scale.md).
        "compute": ComputeResource(),
        "automation": automation.AutomationSettings(),
        # Unset fields take their VLIT_LLM_* variable when a run starts, so a run config that
        # sets some of them keeps the others (resources.LLM_ENV).
        "llm": LLMResource(),
    },
)
