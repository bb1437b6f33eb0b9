"""Partitions (one per source batch) and the concurrency pool that serialises DuckDB writers."""

from __future__ import annotations

import dagster as dg

# DuckDB allows one writing process per file: every asset or check that writes holds this pool,
# whose limit is 1 in dagster.yaml, so parallel partition runs queue instead of failing on the lock.
WRITER_POOL = "duckdb_writer"

sources_partitions = dg.DynamicPartitionsDefinition(name="sources")
