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
    principle: str | None = None  # the quality principle it speaks for (meta["principle"])
    band: str = ""  # the pass band in words: "≥ 0.3", "rows must be ≥ 2; ≤ 5% may fail"

    @property
    def status(self) -> str:
        if not self.judged:
            return "not judged"
        return "passed" if self.success else "failed"

    @property
    def expectation_id(self) -> str:
        return f"{self.frame}.{self.expectation}({self.column or ''})"

    @property
    def group(self) -> str:
        """What the UI groups it under: its principle, else the frame it reads."""
        return self.principle or self.frame

    @property
    def label(self) -> str:
        """The figure or column a reader knows, with the rule where one column has two."""
        if self.column is None:
            return "row count"
        return self.column + _LABEL_SUFFIX.get(self.expectation, "")

    @property
    def explained(self) -> str:
        """The observed value with its pass band, e.g. ``0.4123 (≥ 0.3)``."""
        return f"{self.observed_text} ({self.band})" if self.band else self.observed_text


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
            f"{o.frame}.{o.label} {o.explained}"
            + (f" e.g. {list(o.examples)[:3]}" if o.examples else "")
            for o in self.failed
        ]
        return f"{self.suite}: {len(self.failed)}/{judged} failed{unjudged}: " + "; ".join(parts)


# What a row counted by a row-level expectation did wrong (its count is "failing rows" else).
_ROW_COUNTS = {
    "expect_column_values_to_be_unique": "repeated rows",
    "expect_column_values_to_not_be_null": "null rows",
}
_LABEL_SUFFIX = {
    "expect_column_values_to_be_unique": " (unique)",
    "expect_column_values_to_not_be_null": " (not null)",
}
GROUP_ORDER = ("correctness", "diversity", "complexity", "balance", "relevance", "format", "split")


def figure(value: float) -> str:
    """A number as a reader wants it: 4 significant figures, integers as integers."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if 1e4 <= abs(value) < 1e15:  # no exponent for a figure a reader counts: 12346 -> 12350
        return f"{float(f'{value:.4g}'):.0f}"
    return f"{value:.4g}"


def describe_band(kwargs: dict[str, Any], expectation: str) -> str:
    """The pass band of an expectation's arguments, in words."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if expectation in ("expect_column_mean_to_be_between", "expect_table_row_count_to_be_between"):
        return _interval(low, high, strict_min=bool(kwargs.get("strict_min")))
    mostly = kwargs.get("mostly")
    if mostly is None or mostly >= 1:
        allowed = "none may fail"
    else:
        allowed = f"≤ {figure(round((1 - mostly) * 100, 6))}% may fail"
    if "value_set" in kwargs and len(kwargs["value_set"]) <= 4:
        rule = "in {" + ", ".join(str(v) for v in kwargs["value_set"]) + "}"
    elif "value_set" in kwargs:
        rule = "in the known set"
    elif low is not None or high is not None:
        rule = _interval(low, high, strict_min=bool(kwargs.get("strict_min")))
        rule = rule if rule.startswith(("≥", "≤", ">")) else f"in {rule}"
    else:
        return "none allowed"
    return f"rows must be {rule}; {allowed}"


def _interval(low: float | None, high: float | None, strict_min: bool = False) -> str:
    if low is not None and high is not None:
        return f"{'(' if strict_min else '['}{figure(low)}, {figure(high)}]"
    if low is not None:
        return f"{'>' if strict_min else '≥'} {figure(low)}"
    if high is not None:
        return f"≤ {figure(high)}"
    return ""


def _quiet_gx() -> None:
    for name in ("great_expectations", "great_expectations.core", "tqdm"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _observed(result: dict[str, Any], expectation: str) -> tuple[float | None, str]:
    """Pick the number a person would call 'the observed value' of an expectation result."""
    if "observed_value" in result:
        value = result["observed_value"]
        if isinstance(value, bool):
            return float(value), str(value)
        if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
            return float(value), figure(value)
        return None, str(value)
    if "unexpected_count" in result:
        n = result.get("unexpected_count") or 0
        total = result.get("element_count") or 0
        what = _ROW_COUNTS.get(expectation, "failing rows")
        return float(n), f"{n} {what if n != 1 else what[:-1]} of {total}"
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
            if config is None:  # GX attaches the configuration to every result it validated
                raise RuntimeError(f"suite {name}.{frame_name}: a result without its expectation")
            observed, observed_text = _observed(r.result or {}, config.type)
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
                    principle=(config.meta or {}).get("principle"),
                    band=describe_band(config.kwargs, config.type),
                )
            )
    return outcome
