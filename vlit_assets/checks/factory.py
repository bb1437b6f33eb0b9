"""Turn a GX suite into a blocking Dagster asset check that also records its history in DuckDB."""

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import duckdb
import polars as pl

from vlit_assets.checks.gx_runner import GROUP_ORDER, ExpectationOutcome, SuiteOutcome
from vlit_assets.core import warehouse
from vlit_assets.core.schemas import META_CHECK_RESULTS
from vlit_assets.resources import WarehouseResource

Validate = Callable[..., SuiteOutcome]  # (con, source) or (con, source, config)
ALL_SOURCES = "*"


def grouped(outcome: SuiteOutcome) -> list[ExpectationOutcome]:
    """Expectations by principle (correctness, diversity, complexity, balance, relevance, then
    format and split), then the frames of suites without principles, in suite order."""
    first_seen: dict[str, int] = {}
    for o in outcome.outcomes:
        first_seen.setdefault(o.group, len(first_seen))

    def rank(o: ExpectationOutcome) -> int:
        if o.group in GROUP_ORDER:
            return GROUP_ORDER.index(o.group)
        return len(GROUP_ORDER) + first_seen[o.group]

    return sorted(outcome.outcomes, key=rank)


def outcome_metadata(outcome: SuiteOutcome) -> dict[str, dg.MetadataValue]:
    """One entry per expectation, ``<principle>/<figure>``: its observed value with its pass band
    (``0.4123 (≥ 0.3)``, ``2 failing rows of 88 (none allowed; ...)``); then a table of all."""
    metadata: dict[str, dg.MetadataValue] = {}
    ordered = grouped(outcome)
    for o in ordered:
        key = f"{o.group}/{o.label}"
        if key in metadata:  # two expectations on one figure: tell them apart by rule
            key = f"{key} [{o.expectation}]"
        failed = " FAILED" if o.judged and not o.success else ""
        metadata[key] = dg.MetadataValue.text(o.explained + failed)
    metadata["expectations"] = dg.MetadataValue.md(
        "| principle | expectation | passed | observed | pass band |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {o.group} | `{o.frame}.{o.label}` | {_STATUS[o.status]} | {o.observed_text} "
            f"| {o.band} |"
            for o in ordered
        )
    )
    metadata["failed_expectations"] = dg.MetadataValue.int(len(outcome.failed))
    metadata["not_judged_expectations"] = dg.MetadataValue.int(len(outcome.not_judged))
    return metadata


_STATUS = {"passed": "yes", "failed": "**no**", "not judged": "not judged"}


def record_outcome(
    con: duckdb.DuckDBPyConnection,
    outcome: SuiteOutcome,
    *,
    run_id: str,
    check_name: str,
    asset: str,
    source: str,
    severity: str = "ERROR",
) -> int:
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [
        {
            "run_id": run_id,
            "check_name": check_name,
            "asset": asset,
            "source": source,
            "expectation_id": o.expectation_id,
            "frame": o.frame,
            "expectation": o.expectation,
            "column_name": o.column,
            "success": o.success if o.judged else None,
            "observed": o.observed,
            "observed_text": o.observed_text,
            "unexpected_count": o.unexpected_count,
            "element_count": o.element_count,
            "evaluated_at": now,
            "severity": severity,
        }
        for o in outcome.outcomes
    ]
    if not rows:
        return 0
    frame = pl.DataFrame(
        rows,
        schema_overrides={"column_name": pl.String, "observed": pl.Float64, "success": pl.Boolean},
    )
    return warehouse.upsert(con, META_CHECK_RESULTS, frame)


def build_suite_check(
    *,
    name: str,
    asset: str,
    validate: Validate,
    description: str,
    pool: str,
    partitions_def: dg.PartitionsDefinition | None = None,
    config_cls: type[dg.Config] | None = None,
    gate_field: str | None = None,
) -> dg.AssetChecksDefinition:
    """A check that blocks: when the suite fails, downstream assets of ``asset`` do not run.

    It writes meta__check_results, so it holds ``pool`` (the writer pool).
    With ``config_cls``, the check takes that run config (thresholds, editable in the
    launchpad) and passes it to ``validate`` as a third argument. With ``gate_field``, that
    boolean config field decides whether a failure is an ERROR (a gate: it blocks and is
    recorded as such) or a WARN (measured and reported; nothing downstream waits on it).
    """

    def evaluate(
        context: dg.AssetCheckExecutionContext, warehouse_db: WarehouseResource, config=None
    ) -> dg.AssetCheckResult:
        source = context.partition_key if partitions_def is not None else ALL_SOURCES
        gate = gate_field is None or bool(getattr(config, gate_field))
        severity = dg.AssetCheckSeverity.ERROR if gate else dg.AssetCheckSeverity.WARN
        with warehouse_db.connect() as con:
            outcome = validate(con, source) if config is None else validate(con, source, config)
            record_outcome(
                con,
                outcome,
                run_id=context.run.run_id,
                check_name=name,
                asset=asset,
                source=source,
                severity=severity.value,
            )
        summary = outcome.summary() + ("" if gate or outcome.success else " (reported, not a gate)")
        (context.log.info if outcome.success else context.log.warning)(summary)
        return dg.AssetCheckResult(
            passed=outcome.success,
            severity=severity,
            description=summary,
            metadata=outcome_metadata(outcome),
        )

    decorate = dg.asset_check(
        asset=asset,
        name=name,
        description=description,
        blocking=True,
        partitions_def=partitions_def,
        pool=pool,
    )
    if config_cls is not None:

        def _configured_check(
            context: dg.AssetCheckExecutionContext,
            config: config_cls,  # type: ignore[valid-type]
            warehouse_db: WarehouseResource,
        ) -> dg.AssetCheckResult:
            return evaluate(context, warehouse_db, config)

        _configured_check.__name__ = name
        return decorate(_configured_check)

    def _check(
        context: dg.AssetCheckExecutionContext, warehouse_db: WarehouseResource
    ) -> dg.AssetCheckResult:
        return evaluate(context, warehouse_db)

    _check.__name__ = name
    return decorate(_check)
