"""Partitions: one per source batch (its key is the source name)."""

from __future__ import annotations

import dagster as dg

from vlit_assets.core.vocab import SOURCES

sources_partitions = dg.DynamicPartitionsDefinition(name=SOURCES)
