"""Incremental rebuilds: the cost of one new batch against a full build, and what it touched.

Run: ``.venv/bin/python benchmarks/incremental.py [--batches 100] [--images 3] [--keep DIR]``.
Everything goes under a temp directory (or ``--keep DIR``): the batches, a DAGSTER_HOME with the
project's dagster.yaml (a real ``DagsterInstance``, SQLite storage, the ``duckdb_writer`` pool),
the DuckDB file and the outputs.

1. Full build. ``--batches`` batches of ``--images`` images each are made from data/sample
   (new ids, captions unique to each batch) in ``<data>/incoming/``; one tick of
   ``incoming_batches_sensor`` registers them and requests their runs; each request runs the
   per-source stages with its run config (``runner.run_source``), then the final stage runs
   once (``runner.run_final``).
2. Warm rebuild. One more batch (1% of the data) is dropped in; a sensor tick, the one run it
   requests, then the final stage, in the same process as the full build.
3. Cold rebuild. Another batch, rebuilt by a fresh Python process doing the same: the wall time
   includes interpreter start-up, imports, Dagster definitions and loading MiniLM.

Fixed costs. Start-up and imports happen once per process, model loading once per process (the
embedder is shared by every run in it, resources._embedder). The full build pays the model load
once, in its first run, and is timed after imports; the warm rebuild pays neither; the cold
rebuild pays both, and the start-up and model load are also measured alone in a fresh process.
Under ``dagster dev`` each launched run is a fresh process, so the cold figure is the one a file
drop costs there; the warm one is what the pipeline itself costs.

Counting, not assuming: before and after each rebuild the script snapshots, per table and
source, the run ids that wrote the rows (``run_id``; ``scored_run_id`` for scored rows), the
instance's materializations per asset and partition, and the embedding cache's keys. Only the new
partition may change; the final stage is unpartitioned and rebuilds every decision by design
(stored vectors only: its ``texts_embedded`` is printed).

Per-batch balance is left to the final suite (``SMALL_BATCH_CHECKS``: on two or three images the
yes-ratio moves by 0.1 per answer), the same way in every run of both builds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vlit_assets.core.schemas import FINAL_DECISIONS  # noqa: E402
from vlit_assets.testing.incremental import (  # noqa: E402
    PER_SOURCE_TABLES,
    RUN_ID_COLUMN,
    SMALL_BATCH_CHECKS,
    Snapshot,
    evaluate_sensor,
    execute_request,
    make_batch,
    partitions_with_new_events,
    read_table,
    source_text_hashes,
    sources_with_new_run_ids,
    texts_embedded,
)
from vlit_assets.testing.pipeline import materialization_metadata  # noqa: E402

TARGET_RATIO = 0.05


@dataclass
class Layout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def db(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_HOME": str(self.home),
            "VLIT_DB_PATH": str(self.db),
            "VLIT_DATA_DIR": str(self.data),
            "VLIT_OUTPUT_DIR": str(self.out),
            "VLIT_LLM_BASE_URL": "",
            "VLIT_LLM_MODEL": "",
            "VLIT_LLM_API_KEY": "",
        }

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "dagster.yaml", self.home / "dagster.yaml")
        os.environ.update(self.env())


@dataclass
class Build:
    """What one build did: wall time, its runs' results, step seconds by step key."""

    wall_s: float = 0.0
    runs: int = 0
    failed: list[str] = field(default_factory=list)
    texts_embedded: dict[str, int] = field(default_factory=dict)
    final_texts_embedded: int | None = None
    step_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    source_runs_s: float = 0.0  # wall of the per-source runs, summed
    final_s: float = 0.0  # wall of the final run


def _step_seconds(instance, run_id: str, into: dict[str, float]) -> None:
    starts: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            into[event.step_key] += entry.timestamp - starts.pop(event.step_key, entry.timestamp)


def build(instance, *, with_final: bool = True) -> Build:
    """One sensor tick, every run it requests, then the final stage; timed end to end."""
    from vlit_assets.defs.automation import AutomationSettings
    from vlit_assets.resources import ProjectPaths
    from vlit_assets.runner import run_final

    paths = ProjectPaths(
        data_dir=os.environ["VLIT_DATA_DIR"], output_dir=os.environ["VLIT_OUTPUT_DIR"]
    )
    out = Build()
    start = time.perf_counter()
    for request in evaluate_sensor(instance, paths, AutomationSettings()):
        t = time.perf_counter()
        result = execute_request(instance, request, SMALL_BATCH_CHECKS)
        out.source_runs_s += time.perf_counter() - t
        out.runs += 1
        if not result.success:
            out.failed.append(str(request.partition_key))
        else:
            out.texts_embedded[str(request.partition_key)] = texts_embedded(result)
        _step_seconds(instance, result.run_id, out.step_s)
    if with_final:
        t = time.perf_counter()
        final = run_final(instance, log_level="WARNING")
        out.final_s = time.perf_counter() - t
        out.runs += 1
        if not final.success:
            out.failed.append("final")
        else:
            meta = materialization_metadata(final, "final__decisions")
            out.final_texts_embedded = int(meta["texts_embedded"])
        _step_seconds(instance, final.run_id, out.step_s)
    out.wall_s = time.perf_counter() - start
    return out


def fixed_costs() -> dict[str, float]:
    """Interpreter start-up + imports + definitions, and MiniLM loading, in a fresh process."""
    code = (
        "import json, time; t0 = time.perf_counter()\n"
        "import dagster, vlit_assets.definitions, vlit_assets.runner\n"
        "t1 = time.perf_counter()\n"
        "from vlit_assets.resources import EmbedderResource\n"
        "EmbedderResource().get().encode(['warm up'])\n"
        "print(json.dumps({'import_s': t1 - t0, 'model_s': time.perf_counter() - t1}))\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    wall = time.perf_counter() - start
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # What the child could not time itself: exec and interpreter start-up, and its exit (tearing
    # down torch and the other loaded modules is most of this; a bare interpreter starts in ms).
    figures["startup_s"] = wall - figures["import_s"] - figures["model_s"]
    return figures


def cold_rebuild(layout: Layout) -> tuple[float, dict]:
    """The rebuild in a fresh process; returns its wall time from the parent and its report."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(layout.root)],
        capture_output=True,
        text=True,
        env={**os.environ, **layout.env()},
        cwd=REPO,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"cold rebuild failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def child(root: Path) -> None:
    """Entry point of the cold rebuild's process (``--child``)."""
    import dagster as dg

    layout = Layout(root)
    os.environ.update(layout.env())
    with dg.DagsterInstance.get() as instance:
        done = build(instance)
    print(
        json.dumps(
            {
                "wall_s": done.wall_s,
                "failed": done.failed,
                "texts_embedded": done.texts_embedded,
                "final_texts_embedded": done.final_texts_embedded,
            }
        )
    )


@dataclass
class Touched:
    """What a rebuild changed, counted from the snapshots around it."""

    new_run_id_sources: set[str]
    event_partitions: set[str | None]
    rows_reprocessed: dict[str, int]
    rows_total: dict[str, int]
    untouched_event_changes: int
    new_cache_keys: int
    cache_keys_outside_new_batch: int
    old_cache_keys_lost: int


@dataclass
class Snap:
    """The test's snapshot plus the run ids of the final stage's decisions."""

    base: Snapshot
    final_run_ids: set[str]

    @classmethod
    def take(cls, instance, db: Path) -> Snap:
        decisions = read_table(db, FINAL_DECISIONS)
        return cls(Snapshot.take(instance, db), set(decisions["run_id"].unique().to_list()))


def count_touched(db: Path, before: Snap, after: Snap, new: str) -> Touched:
    old_ids = set().union(*before.base.run_ids.values())
    reprocessed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for table in PER_SOURCE_TABLES:
        frame = read_table(db, table)
        column = RUN_ID_COLUMN[table.stage]
        total[table.stage] += frame.height
        reprocessed[table.stage] += frame.filter(~pl.col(column).is_in(sorted(old_ids))).height
    decisions = read_table(db, FINAL_DECISIONS)
    total["final"] = decisions.height
    previous_final = set(before.final_run_ids)
    reprocessed["final"] = decisions.filter(~pl.col("run_id").is_in(sorted(previous_final))).height
    partitions = partitions_with_new_events(before.base, after.base)
    changed_old = sum(
        1
        for key, n in after.base.events.items()
        if key[1] not in (new, None) and n != before.base.events.get(key, 0)
    )
    new_keys = after.base.embedded - before.base.embedded
    return Touched(
        new_run_id_sources=sources_with_new_run_ids(before.base, after.base),
        event_partitions=partitions,
        rows_reprocessed=dict(reprocessed),
        rows_total=dict(total),
        untouched_event_changes=changed_old,
        new_cache_keys=len(new_keys),
        cache_keys_outside_new_batch=len(new_keys - source_text_hashes(db, new)),
        old_cache_keys_lost=len(before.base.embedded - after.base.embedded),
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _row(label: str, value: object, note: str = "") -> None:
    text = f"{value:,.2f}" if isinstance(value, float) else str(value)
    print(f"  {label:<58} {text:>14}  {note}")


def _print_touched(name: str, t: Touched, new: str, embedded: dict[str, int], final_te) -> bool:
    ok_sources = t.new_run_id_sources == {new}
    ok_events = t.event_partitions <= {new, None} and t.untouched_event_changes == 0
    ok_embed = (
        t.cache_keys_outside_new_batch == 0
        and t.old_cache_keys_lost == 0
        and set(embedded) == {new}
        and t.new_cache_keys == embedded[new]
        and final_te == 0
    )
    print(f"\n{name}: what it touched (counted)")
    _row("sources with new run ids (raw/generated/scored)", ", ".join(sorted(t.new_run_id_sources)))
    parts = ", ".join(sorted(p or "(unpartitioned: final)" for p in t.event_partitions))
    _row("partitions with new materializations", parts)
    _row("untouched (asset, partition) pairs with new events", t.untouched_event_changes)
    for stage in ("raw", "generated", "scored", "final"):
        note = "every decision, by design (stored vectors only)" if stage == "final" else ""
        _row(
            f"rows reprocessed: {stage}",
            f"{t.rows_reprocessed.get(stage, 0)} / {t.rows_total.get(stage, 0)}",
            note,
        )
    _row(f"texts embedded by scored ({new})", embedded.get(new, "-"))
    _row(
        "texts embedded by scored (other partitions)",
        sum(n for s, n in embedded.items() if s != new),
    )
    _row("texts embedded by final", final_te)
    _row(
        "new embed__cache rows / of them not new-batch texts",
        (f"{t.new_cache_keys} / {t.cache_keys_outside_new_batch}"),
    )
    verdict = ok_sources and ok_events and ok_embed
    _row("only the new partition reprocessed", "yes" if verdict else "NO")
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--images", type=int, default=3, help="images per batch")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    root = args.keep or Path(tempfile.mkdtemp(prefix="vlit-incremental-"))
    if root.exists() and any(root.iterdir()):
        sys.exit(f"{root} is not empty")
    layout = Layout(root)
    layout.prepare()
    print(f"load average at start: {_load()}  (2 cores, shared)")
    print(f"work dir: {root}")

    fixed = fixed_costs()

    import dagster as dg

    t = time.perf_counter()
    for k in range(args.batches):
        make_batch(layout.data / "incoming" / f"batch-{k:03d}", k, images=args.images)
    make_s = time.perf_counter() - t

    with dg.DagsterInstance.get() as instance:
        full = build(instance)
        if full.failed:
            sys.exit(f"full build: runs failed for {full.failed}")

        warm_name = f"batch-{args.batches:03d}"
        before = Snap.take(instance, layout.db)
        make_batch(layout.data / "incoming" / warm_name, args.batches, images=args.images)
        warm = build(instance)
        after = Snap.take(instance, layout.db)
        if warm.failed:
            sys.exit(f"warm rebuild: runs failed for {warm.failed}")
        warm_touched = count_touched(layout.db, before, after, warm_name)

        cold_name = f"batch-{args.batches + 1:03d}"
        make_batch(layout.data / "incoming" / cold_name, args.batches + 1, images=args.images)
        before_cold = after
        cold_wall, cold = cold_rebuild(layout)
        after_cold = Snap.take(instance, layout.db)
        if cold["failed"]:
            sys.exit(f"cold rebuild: runs failed for {cold['failed']}")
        cold_touched = count_touched(layout.db, before_cold, after_cold, cold_name)

    print(f"\nincremental rebuild: {args.batches} batches x {args.images} images, +1 batch each")
    print("\nfixed costs (fresh process, measured alone)")
    _row("python start-up and exit", fixed["startup_s"], "s")
    _row("imports + Dagster definitions", fixed["import_s"], "s")
    _row("MiniLM load + first encode", fixed["model_s"], "s")
    print("\nwall times")
    _row("making the batches (file copies; not part of any build)", make_s, "s")
    _row(f"full build: sensor tick + {args.batches} source runs + final", full.wall_s, "s")
    _row("  of which: source runs, mean per run", full.source_runs_s / args.batches, "s")
    _row("  of which: final run", full.final_s, "s")
    _row("warm rebuild: sensor tick + 1 source run + final", warm.wall_s, "s")
    _row("cold rebuild: fresh process, start-up + model load included", cold_wall, "s")
    ratio_warm = warm.wall_s / full.wall_s
    ratio_cold = cold_wall / full.wall_s
    target = f"target <= {TARGET_RATIO:.0%}"
    _row(
        "ratio warm rebuild / full build",
        f"{ratio_warm:.2%}",
        f"{target}: {'ok' if ratio_warm <= TARGET_RATIO else 'NOT MET'}",
    )
    _row(
        "ratio cold rebuild / full build",
        f"{ratio_cold:.2%}",
        f"{target}: {'ok' if ratio_cold <= TARGET_RATIO else 'NOT MET'}",
    )

    print("\nwhere the full build's time goes (step seconds, summed over runs)")
    for key, s in sorted(full.step_s.items(), key=lambda kv: -kv[1]):
        _row(key, s, f"s   warm rebuild: {warm.step_s.get(key, 0.0):.2f} s")
    overhead = full.source_runs_s + full.final_s - sum(full.step_s.values())
    _row("Dagster run overhead (run wall - steps)", overhead, "s")

    ok = _print_touched(
        "warm rebuild", warm_touched, warm_name, warm.texts_embedded, warm.final_texts_embedded
    )
    ok &= _print_touched(
        "cold rebuild",
        cold_touched,
        cold_name,
        cold["texts_embedded"],
        cold["final_texts_embedded"],
    )
    print(f"\nload average at end: {_load()}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
