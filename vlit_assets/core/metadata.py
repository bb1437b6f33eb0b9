"""Run metadata as plain typed values (the Dagster layer wraps them), and column means as floats."""

from __future__ import annotations

from typing import Any, TypeAlias

import polars as pl

# The values a stage reports: what Dagster takes as metadata as they are, and dicts, which the
# Dagster layer turns into JSON values.
MetaValue: TypeAlias = str | int | float | list[Any] | dict[str, Any] | None
Metadata: TypeAlias = dict[str, MetaValue]


def mean(column: pl.Series) -> float | None:
    """The mean of a numeric or boolean column; None when it holds no value.

    ``Series.mean`` is typed for every dtype (dates, durations, decimals); the figures need the
    float a numeric column gives, so anything else is an error that names the column.
    """
    value = column.mean()
    if value is None or isinstance(value, float):
        return value
    raise TypeError(f"column {column.name!r} ({column.dtype}) has no float mean: {value!r}")
