"""Run Great Expectations 1.x suites on pandas frames and flatten the results (no Dagster here).

GX's SQL datasource on DuckDB closes its connection before fetching and silently validates
nothing, so suites run on pandas frames read from DuckDB by the suite's own query.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class ExpectationOutcome:
    frame: str
    expectation: str
    column: str | None
    success: bool
    observed: float | None
    observed_text: str
    unexpected_count: int | None
    element_count: int | None
    examples: tuple[Any, ...] = ()
    # False when the figure could not be computed on the data (null, never 0): such an
    # expectation is reported as "not judged", neither passed nor failed, and gates nothing.
    judged: bool = True

    @property
    def status(self) -> str:
        if not self.judged:
            return "not judged"
        return "passed" if self.success else "failed"

    @property
    def expectation_id(self) -> str:
        return f"{self.frame}.{self.expectation}({self.column or ''})"


@dataclass
class SuiteOutcome:
    suite: str
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    @property
    def not_judged(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.judged]

    def summary(self) -> str:
        judged = len(self.outcomes) - len(self.not_judged)
        unjudged = f", {len(self.not_judged)} not judged" if self.not_judged else ""
        if self.success:
            return f"{self.suite}: all {judged} judged expectations passed{unjudged}"
        parts = [
            f"{o.expectation_id} observed {o.observed_text}"
            + (f" e.g. {list(o.examples)[:3]}" if o.examples else "")
            for o in self.failed
        ]
        return f"{self.suite}: {len(self.failed)}/{judged} failed{unjudged}: " + "; ".join(parts)


def _quiet_gx() -> None:
    for name in ("great_expectations", "great_expectations.core", "tqdm"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _observed(result: dict[str, Any]) -> tuple[float | None, str]:
    """Pick the number a person would call 'the observed value' of an expectation result."""
    if "observed_value" in result:
        value = result["observed_value"]
        if isinstance(value, bool):
            return float(value), str(value)
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
            return float(value), f"{value:.4g}" if isinstance(value, float) else str(value)
        return None, str(value)
    if "unexpected_count" in result:
        n = result.get("unexpected_count") or 0
        total = result.get("element_count") or 0
        return float(n), f"{n} unexpected of {total}"
    return None, ""


def run_suite(
    name: str, frames: dict[str, pd.DataFrame], expectations: dict[str, list[Any]]
) -> SuiteOutcome:
    """Validate each named frame against its expectations in an ephemeral GX context."""
    import great_expectations as gx  # heavy import: only when a suite actually runs

    _quiet_gx()
    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # noqa: BLE001 - progress bars are cosmetic; older layouts lack the type
        pass
    datasource = context.data_sources.add_pandas(name=f"{name}_frames")
    outcome = SuiteOutcome(suite=name)
    for frame_name, frame_expectations in expectations.items():
        if frame_name not in frames:
            raise KeyError(f"suite {name}: no frame named {frame_name!r}")
        asset = datasource.add_dataframe_asset(name=frame_name)
        batch_definition = asset.add_batch_definition_whole_dataframe(f"{frame_name}_all")
        suite = gx.ExpectationSuite(name=f"{name}.{frame_name}", expectations=frame_expectations)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frames[frame_name]})
        result = batch.validate(suite, result_format="SUMMARY")
        for r in result.results:
            config = r.expectation_config
            observed, observed_text = _observed(r.result or {})
            outcome.outcomes.append(
                ExpectationOutcome(
                    frame=frame_name,
                    expectation=config.type,
                    column=config.kwargs.get("column"),
                    success=bool(r.success),
                    observed=observed,
                    observed_text=observed_text,
                    unexpected_count=(r.result or {}).get("unexpected_count"),
                    element_count=(r.result or {}).get("element_count"),
                    examples=tuple((r.result or {}).get("partial_unexpected_list") or ())[:5],
                )
            )
    return outcome
