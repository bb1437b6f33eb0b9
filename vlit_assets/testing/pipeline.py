"""Helpers for in-process Dagster tests: a temp instance, temp DuckDB and temp outputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from vlit_assets.core import warehouse
from vlit_assets.resources import env_table_root

if TYPE_CHECKING:  # pytest is a dev dependency; the monkeypatch comes from a test
    import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    instance: dg.DagsterInstance
    db_path: Path
    output_dir: Path
    table_root: str | None = None  # the table files' root, when the run uses them

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with warehouse.connect(self.db_path, read_only=True, table_root=self.table_root) as con:
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None):
        return self.query(sql, params)[0][0]


@contextmanager
def pipeline_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, table_root: str | None = None
) -> Iterator[Env]:
    """A temp instance and warehouse; ``table_root`` puts the large tables in table files."""
    db_path = tmp_path / "warehouse.duckdb"
    output_dir = tmp_path / "out"
    monkeypatch.setenv("VLIT_DB_PATH", str(db_path))
    if table_root is None:
        monkeypatch.delenv("VLIT_TABLE_ROOT", raising=False)
    else:
        monkeypatch.setenv("VLIT_TABLE_ROOT", table_root)
    monkeypatch.setenv("VLIT_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("VLIT_OUTPUT_DIR", str(output_dir))
    for key in [k for k in os.environ if k.startswith("VLIT_LLM_")]:
        monkeypatch.delenv(key)  # a developer's LLM settings must not leak into tests
    for key in ("VLIT_LLM_BASE_URL", "VLIT_LLM_MODEL", "VLIT_LLM_API_KEY"):
        monkeypatch.setenv(key, "")
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield Env(instance, db_path, output_dir, env_table_root())


def materialization_metadata(result: dg.ExecuteInProcessResult, key: str) -> dict:
    """The metadata values of the single materialization of ``key`` in a run."""
    (mat,) = [
        m
        for m in result.get_asset_materialization_events()
        if m.asset_key is not None and m.asset_key.to_user_string() == key
    ]
    return {k: v.value for k, v in mat.materialization.metadata.items()}


def check_evaluation(result: dg.ExecuteInProcessResult, name: str):
    """The single evaluation of the check ``name`` in a run."""
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation
