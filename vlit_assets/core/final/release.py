"""The export run over the warehouse: its content-addressed version, provenance and file index."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path

import duckdb
import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.final.export import sha256_file, write_export
from vlit_assets.core.generated.prompts import PROMPT_VERSION
from vlit_assets.core.generated.templates.run import TEMPLATE_VERSION
from vlit_assets.core.raw.annotations import find_coco_files
from vlit_assets.core.raw.imports import image_root_of
from vlit_assets.core.schemas import (
    FINAL_CONVERSATIONS,
    FINAL_DECISIONS,
    FINAL_EXPORT_FILES,
    FINAL_RUNS,
    META_SOURCES,
)


@dataclass(frozen=True)
class ExportOutcome:
    version: str
    target: Path  # the version's folder
    status: str  # written, or unchanged when the version was already exported
    conversations: int


def export_version(kept: pl.DataFrame, settings: dict) -> str:
    """Content-addressed: the same rows, texts, splits and settings give the same version.

    Images enter by id and file name, not by absolute path, so the same data built in another
    checkout or on another machine gets the same version.
    """
    digest = hashlib.blake2b(digest_size=6)
    rows = kept.select(
        "conversation_id",
        "split",
        "norm_text_hash",
        "image_id",
        pl.col("image_path").str.replace(r"^.*[/\\]", ""),
    )
    for cid, split, text, image_id, image_file in rows.sort("conversation_id").iter_rows():
        # Ids alone are not enough: a new seed or model changes the text under the same id.
        digest.update(f"{cid}:{split}:{text}:{image_id}:{image_file}\n".encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"v-{digest.hexdigest()}"


def code_version(project_root: Path) -> str:
    """Package version and the checkout's commit ("unknown" outside a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(project_root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"vlit_assets {package_version('vlit_assets')} ({commit})"


def export_current(
    con: duckdb.DuckDBPyConnection, *, exports_dir: Path, project_root: Path, run_id: str
) -> ExportOutcome:
    """Write the kept rows of the last final run as a new export version, unless that version
    exists, and index its files in final__export_files."""
    kept = warehouse.read_source(con, FINAL_CONVERSATIONS)
    decisions = warehouse.read_source(con, FINAL_DECISIONS)
    sources = warehouse.read_source(con, META_SOURCES).to_dicts()
    report = _report_of(con, kept)
    used = set(kept["source"].unique().to_list())
    records = [r for r in sources if r["source"] in used]
    settings = report.get("settings", {}) if isinstance(report, dict) else {}
    version = export_version(kept, settings)
    target = exports_dir / version
    if target.exists():
        return ExportOutcome(
            version, target, "unchanged: this version was already exported", kept.height
        )
    result = write_export(
        kept.drop("final_run_id"),
        decisions.drop("run_id"),
        out_dir=exports_dir,
        version=version,
        image_root_by_source={r["source"]: _image_root(r) for r in records},
        manifest_extra={
            "sources": [
                {
                    "source": r["source"],
                    "kind": r["kind"],
                    "root": r["root"],
                    "files": _source_files(r),
                }
                for r in records
            ],
            "code_version": code_version(project_root),
            "template_version": TEMPLATE_VERSION,
            "prompt_version": PROMPT_VERSION,
            "image_source": "; ".join(sorted(used)),
        },
        report=report,
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    files = [*result.files.items(), ("manifest.json", result.version_dir / "manifest.json")]
    rows = pl.DataFrame(
        [
            {
                "version": version,
                "format": _format_of(name),
                "split": _split_of(name),
                "path": str(path),
                "sha256": sha256_file(path),
                "run_id": run_id,
                "created_at": now,
            }
            for name, path in files
        ],
        schema=FINAL_EXPORT_FILES.polars_schema,
    )
    warehouse.upsert(con, FINAL_EXPORT_FILES, rows)
    return ExportOutcome(version, target, f"written: {len(files)} files", kept.height)


def _source_files(record: dict) -> dict[str, str]:
    """sha256 of the annotation or instruction files a source was read from."""
    root = Path(record["root"])
    if record["kind"] == "import":
        files = sorted(p for p in root.iterdir() if p.suffix in {".json", ".jsonl"})
    else:
        files = sorted((root / "annotations").glob("*.json"))
    return {str(p.relative_to(root)): sha256_file(p) for p in files if p.is_file()}


def _image_root(record: dict) -> Path:
    root = Path(record["root"])
    if record["kind"] == "import":
        return image_root_of(root)
    return find_coco_files(root, record["split"]).image_dir


def _report_of(con: duckdb.DuckDBPyConnection, kept: pl.DataFrame) -> dict:
    """The selection report of the final run that wrote the kept rows (from DuckDB)."""
    run_ids = kept["final_run_id"].unique().to_list()
    if len(run_ids) != 1 or not warehouse.table_exists(con, FINAL_RUNS.name):
        return {}
    row = con.execute(
        "SELECT report FROM final__runs WHERE final_run_id = ?", [run_ids[0]]
    ).fetchone()
    return json.loads(row[0]) if row else {}


def _format_of(name: str) -> str:
    for prefix, kind in (("llava", "llava"), ("paper", "paper"), ("charts/", "chart")):
        if name.startswith(prefix):
            return kind
    return {".parquet": "parquet", ".md": "card", ".json": "manifest"}.get(
        Path(name).suffix, "other"
    )


def _split_of(name: str) -> str | None:
    stem = Path(name).stem
    return next((s for s in ("train", "val") if stem.endswith(f"_{s}")), None)
