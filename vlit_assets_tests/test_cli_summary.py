"""vlit's run summary is read from materialization metadata, not from the warehouse."""

from __future__ import annotations

from vlit_assets import cli


def test_rows_per_table_and_rejects_come_from_the_metadata() -> None:
    materialized = {
        "raw__images": {"dagster/row_count": 24, "source_kind": "coco"},
        "raw__rejects": {"dagster/row_count": 3, "rejects/image_missing": 2, "rejects/bbox_x": 1},
        "generated__conversations": {
            "dagster/row_count": 88,
            "rows/generated__llm_requests": 5,
            "rows/generated__llm_verification": 0,
        },
    }
    counts, rejects = cli._summary_rows(materialized)
    assert counts == {
        "raw__images": 24,
        "raw__rejects": 3,
        "generated__conversations": 88,
        "generated__llm_requests": 5,
        "generated__llm_verification": 0,
    }
    assert list(counts) == [  # the tables' own order, as the warehouse lists them
        "raw__images",
        "raw__rejects",
        "generated__conversations",
        "generated__llm_requests",
        "generated__llm_verification",
    ]
    assert rejects == {"bbox_x": 1, "image_missing": 2}


def test_the_final_summary_prints_kept_drops_by_count_and_splits(capsys, monkeypatch) -> None:
    class Result:
        run_id = "r1"
        success = True

        @staticmethod
        def get_asset_materialization_events():
            return []

        @staticmethod
        def get_asset_check_evaluations():
            return []

        all_events = ()

    def fake(result, instance, partition):
        assert partition is None
        return {
            "final__decisions": {
                "dagster/row_count": 10,
                "dropped": 4,
                "drops/min_relevance": 1,
                "drops/exact_duplicate": 3,
            },
            "final__conversations": {"split/val": 1, "split/train": 5, "dagster/row_count": 6},
        }

    monkeypatch.setattr(cli, "_materializations", fake)
    assert cli.print_final_summary(Result()) == cli.Exit.OK
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert lines == [
        ["kept", "6"],
        ["dropped:", "exact_duplicate", "3"],
        ["dropped:", "min_relevance", "1"],
        ["split", "train", "5"],
        ["split", "val", "1"],
    ]


def test_the_compute_line_adds_up_the_steps_that_ran_on_the_cluster() -> None:
    from types import SimpleNamespace

    from vlit_assets.core.shards import ShardRun, compute_metadata

    def step(runs: list[ShardRun] | None) -> SimpleNamespace:
        mapper = None
        if runs is not None:
            mapper = SimpleNamespace(kind="ray", address="127.0.0.1:6379", runs=runs)
        return SimpleNamespace(materialization=SimpleNamespace(metadata=compute_metadata(mapper)))

    raw = [ShardRun("raw/images", i, 20, node, 1, 0.1) for i, node in enumerate("aab")]
    generated = [
        ShardRun("generated/templates", 0, 40, "a", 1, 0.2),
        ShardRun("generated/regions", 0, 9, "c", 3, 0.2),
    ]

    def result(*steps: SimpleNamespace) -> SimpleNamespace:
        return SimpleNamespace(get_asset_materialization_events=lambda: list(steps))

    line = cli.compute_line(result(step(raw), step(generated)))
    assert line == "compute: ray at 127.0.0.1:6379, 5 shards on 3 nodes, 2 retries"
    assert cli.compute_line(result(step(None))) == (
        "compute: local (this process and its process pools)"
    )
    assert cli.compute_line(result()) is None
