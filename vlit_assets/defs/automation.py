"""Sensors and schedules: new batches in data/incoming/ flow through the per-source stages."""

import hashlib
import json
import time
from dataclasses import dataclass, field

import dagster as dg

from vlit_assets.core.sources import check_source_name
from vlit_assets.core.vocab import SOURCE_JOB, SOURCES
from vlit_assets.defs.partitions import sources_partitions
from vlit_assets.resources import ProjectPaths


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


def batch_fingerprint(path) -> str:
    """A cheap identity of a batch's annotation files: names, sizes and modification times.

    Stat data rather than content hashes, so a tick over many batches reads no file bodies; a
    file touched without a change costs one idempotent re-run of that batch.
    """
    digest = hashlib.sha256()
    for f in sorted((path / "annotations").glob("*.json")):
        stat = f.stat()
        digest.update(f"{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class BatchScan:
    new: list[str] = field(default_factory=list)  # ready, not yet a partition
    changed: list[str] = field(default_factory=list)  # a partition whose annotations changed
    skipped: list[str] = field(default_factory=list)  # "name: reason"
    fingerprints: dict[str, str] = field(default_factory=dict)  # every ready batch, for the cursor


def scan_batches(paths: ProjectPaths, known: set[str], seen: dict[str, str]) -> BatchScan:
    """Sort the folders under incoming/ into new, changed since ``seen`` and not (yet) usable.

    A known partition that ``seen`` has no fingerprint for (registered by ``vlit run`` or before
    the sensor kept one) is adopted as it is, not re-run.
    """
    scan = BatchScan()
    if not paths.incoming_dir.is_dir():
        return scan
    for folder in sorted(p for p in paths.incoming_dir.iterdir() if p.is_dir()):
        name = folder.name
        try:
            check_source_name(name)
        except ValueError as exc:
            scan.skipped.append(f"{name}: {exc}")
            continue
        if not batch_ready(folder):
            if name in seen:  # keep the last settled state, so the change is seen once it settles
                scan.fingerprints[name] = seen[name]
            scan.skipped.append(f"{name}: no annotations/captions_*.json yet, or still changing")
            continue
        fingerprint = batch_fingerprint(folder)
        scan.fingerprints[name] = fingerprint
        if name not in known:
            scan.new.append(name)
        elif name in seen and seen[name] != fingerprint:
            scan.changed.append(name)
    return scan


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
    description=(
        "Registers each new folder in data/incoming/ as a source partition and runs it; "
        "re-runs a known batch whose annotation files changed."
    ),
)
def incoming_batches_sensor(
    context: dg.SensorEvaluationContext, paths: ProjectPaths, automation: AutomationSettings
) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(SOURCES))
    seen = json.loads(context.cursor) if context.cursor else {}
    scan = scan_batches(paths, known, seen)
    for line in scan.skipped:
        context.log.info(f"not yet: {line}")
    cursor = json.dumps(scan.fingerprints, sort_keys=True)
    if not scan.new and not scan.changed:
        return dg.SensorResult(
            skip_reason=dg.SkipReason("no new or changed batch in " + str(paths.incoming_dir)),
            cursor=cursor,
        )
    config = run_config_for_drop(automation)
    requests = [
        dg.RunRequest(
            # The fingerprint in the key lets a changed batch run again while a repeated tick
            # over unchanged files never requests the same run twice.
            run_key=f"incoming:{name}:{scan.fingerprints[name]}",
            partition_key=name,
            run_config=config,
            tags={
                "vlit/source": name,
                "vlit/entry": "sensor",
                "vlit/reason": "new batch" if name in scan.new else "annotations changed",
            },
        )
        for name in sorted(scan.new + scan.changed)
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=(
            [sources_partitions.build_add_request(scan.new)] if scan.new else []
        ),
        cursor=cursor,
    )
