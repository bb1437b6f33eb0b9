"""testing.compare: what two runs may differ in (run ids, times, roots), and naming the rest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from vlit_assets.core import warehouse
from vlit_assets.core.schemas import FINAL_RUNS, RAW_IMAGES
from vlit_assets.testing.compare import export_differences, table_differences


def _image(image_id: str, root: str, run_id: str, width: int = 64) -> dict:
    return {
        "image_id": image_id, "source": "s", "coco_image_id": 1, "file_name": f"{root}/a.jpg",
        "width": width, "height": 48, "oriented_width": width, "oriented_height": 48,
        "format": "JPEG", "mode": "RGB", "bytes": 10, "sha256": "x", "run_id": run_id,
    }  # fmt: skip


def _warehouse(path: Path, images: list[dict], reports: list[str]) -> Path:
    runs = pl.DataFrame(
        {"final_run_id": [f"r{i}" for i in range(len(reports))], "report": reports,
         "held_back": [[] for _ in reports], "created_at": [None] * len(reports)},
        schema=FINAL_RUNS.polars_schema,
    )  # fmt: skip
    with warehouse.connect(path) as con:
        for table, frame in (
            (RAW_IMAGES, pl.DataFrame(images, schema=RAW_IMAGES.polars_schema)),
            (FINAL_RUNS, runs),
        ):
            con.execute(table.ddl())
            con.register("frame", frame.to_arrow())
            con.execute(f'INSERT INTO "{table.name}" SELECT * FROM frame')
    return path


def test_run_ids_roots_and_float_noise_are_not_differences(tmp_path: Path) -> None:
    one = _warehouse(
        tmp_path / "one.duckdb",
        [_image("a", "/tmp/one", "run-1"), _image("b", "/tmp/one", "run-1")],
        [json.dumps({"kept": 3, "entropy": 0.884967693684774})],
    )
    two = _warehouse(
        tmp_path / "two.duckdb",
        [_image("b", "/tmp/two", "run-2"), _image("a", "/tmp/two", "run-2")],
        [json.dumps({"kept": 3, "entropy": 0.8849676936847741})],
    )
    tables = [RAW_IMAGES.name, FINAL_RUNS.name]
    assert table_differences(one, two, roots=["/tmp/one", "/tmp/two"], tables=tables) == []
    # Without the roots, the file names differ: one difference per row, named by key.
    found = [str(d) for d in table_differences(one, two, tables=tables)]
    assert found == [
        "raw__images.file_name [image_id=a]: '/tmp/one/a.jpg' != '/tmp/two/a.jpg'",
        "raw__images.file_name [image_id=b]: '/tmp/one/a.jpg' != '/tmp/two/a.jpg'",
    ]


def test_a_changed_value_a_lost_row_and_a_changed_report_are_named(tmp_path: Path) -> None:
    one = _warehouse(
        tmp_path / "one.duckdb",
        [_image("a", "/r", "1"), _image("b", "/r", "1"), _image("c", "/r", "1")],
        [json.dumps({"kept": 3})],
    )
    two = _warehouse(
        tmp_path / "two.duckdb",
        [_image("a", "/r", "2", width=65), _image("b", "/r", "2")],
        [json.dumps({"kept": 2})],
    )
    found = [str(d) for d in table_differences(one, two)]
    assert found == [
        "raw__images: 3 rows != 2 rows",
        "raw__images.width [image_id=a]: 64 != 65",
        "raw__images [image_id=c]: 1 rows in the first, 0 in the second",
        "final__runs.report [unmatched row]: (('kept', 3),) != (('kept', 2),)",
    ]


def test_exports_equal_but_for_times_roots_and_hashes_of_files_with_run_ids(
    tmp_path: Path,
) -> None:
    def export(name: str, run_id: str, when: str, lines: list[str]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.json").write_text(json.dumps([f"/tmp/{name}/x.jpg", *lines]))
        pl.DataFrame({"id": ["a"], "run_id": [run_id]}).write_parquet(folder / "rows.parquet")
        digest = hashlib.sha256((folder / "rows.parquet").read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps({"created_at": when, "rows": digest}))
        return folder

    one = export("one", "run-1", "2026-01-01T00:00:00.000001+00:00", ["a"])
    two = export("two", "run-2", "2026-02-02T10:11:12.123456+00:00", ["a"])
    assert export_differences(one, two, roots=["/tmp/one", "/tmp/two"]) == []
    three = export("three", "run-3", "2026-02-02T10:11:12+00:00", ["b"])
    found = [str(d) for d in export_differences(one, three, roots=["/tmp/one", "/tmp/three"])]
    assert found == ["exports [data.json]: masked bytes differ from offset 18"]


def test_float_noise_across_a_rounding_boundary_is_not_a_difference() -> None:
    from vlit_assets.testing.compare import compare_table

    table = "meta__dataset_metrics"
    a = pl.DataFrame({"metric": ["kl"], "value": [0.09315411083885]})
    noisy = pl.DataFrame({"metric": ["kl"], "value": [0.09315411083884999]})
    changed = pl.DataFrame({"metric": ["kl"], "value": [0.0931542]})
    assert compare_table(table, a, noisy, []) == []
    assert [d.column for d in compare_table(table, a, changed, [])] == ["value"]
