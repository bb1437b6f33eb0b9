"""Sensors and schedules: new batches in data/incoming/ flow through the per-source stages."""

import time

import dagster as dg

from vlit_assets.core.sources import check_source_name
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import ProjectPaths

SOURCE_JOB = "source_job"


class AutomationSettings(dg.ConfigurableResource):
    """What a file drop may start. LLM generation costs money, so it is off unless allowed here
    and bounded by a budget; without both, dropped batches get template conversations only."""

    llm_on_file_drop: bool = False
    llm_max_requests: int | None = None
    llm_max_cost_usd: float | None = None

    def llm_allowed(self) -> bool:
        return self.llm_on_file_drop and (
            self.llm_max_requests is not None or self.llm_max_cost_usd is not None
        )


SETTLE_SECONDS = 10.0


def batch_ready(path, *, now: float | None = None, settle_s: float = SETTLE_SECONDS) -> bool:
    """Ready once a captions file exists and no annotation file changed for ``settle_s``.

    Copy images first and annotations last; the settle time keeps a file that is still being
    written from being read half-way.
    """
    annotations = path / "annotations"
    if not annotations.is_dir() or not any(annotations.glob("captions_*.json")):
        return False
    now = time.time() if now is None else now
    return all(now - f.stat().st_mtime >= settle_s for f in annotations.glob("*.json"))


def new_batches(paths: ProjectPaths, known: set[str]) -> tuple[list[str], list[str]]:
    """(ready new batch names, folders skipped with the reason) under the incoming folder."""
    ready, skipped = [], []
    if not paths.incoming_dir.is_dir():
        return ready, skipped
    for folder in sorted(p for p in paths.incoming_dir.iterdir() if p.is_dir()):
        name = folder.name
        if name in known:
            continue
        try:
            check_source_name(name)
        except ValueError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if not batch_ready(folder):
            skipped.append(f"{name}: no annotations/captions_*.json yet, or still changing")
            continue
        ready.append(name)
    return ready, skipped


def run_config_for_drop(settings: AutomationSettings) -> dict:
    generated: dict[str, object] = {"use_llm": settings.llm_allowed()}
    if settings.llm_allowed():
        generated["max_requests"] = settings.llm_max_requests
        generated["max_cost_usd"] = settings.llm_max_cost_usd
    return {"ops": {"generated__conversations": {"config": generated}}}


@dg.sensor(
    job_name=SOURCE_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Registers each new folder in data/incoming/ as a source partition and runs it.",
)
def incoming_batches_sensor(
    context: dg.SensorEvaluationContext, paths: ProjectPaths, automation: AutomationSettings
) -> dg.SensorResult | dg.SkipReason:
    known = set(context.instance.get_dynamic_partitions(sources_partitions.name))
    ready, skipped = new_batches(paths, known)
    for line in skipped:
        context.log.info(f"not yet: {line}")
    if not ready:
        return dg.SkipReason("no new batch in " + str(paths.incoming_dir))
    config = run_config_for_drop(automation)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"incoming:{name}",
                partition_key=name,
                run_config=config,
                tags={"vlit/source": name, "vlit/entry": "sensor"},
            )
            for name in ready
        ],
        dynamic_partitions_requests=[sources_partitions.build_add_request(ready)],
    )
