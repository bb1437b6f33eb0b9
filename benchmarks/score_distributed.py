"""Scoring one bench source locally and on a two-node Ray cluster on 127.0.0.1: time and equality.

Run: ``.venv/bin/python benchmarks/score_distributed.py [--bench /work/benchdata/qc/llava_10000]``
(needs the ``[ray]`` extra).

The bench folder is imported once (``vlit run --no-llm --stage generated``) into a DuckDB file
under benchmarks/out/score_distributed/. Each mode then scores a copy of that file with an empty
embedding cache and ``semantic="on"`` (the bench has no captions, so "auto" would embed nothing),
so both pay for every text. It prints wall time per mode, the embedding's share (texts encoded,
seconds, per text and per row: in the driver's encoder calls, so on Ray that includes shipping
the texts and vectors) and whether the scored tables are equal row for row, bit for bit.

Timings are of this machine at the time of the run; a shared machine is noisy, so run it alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from vlit_assets.core.scored.embed import MiniLMEmbedder
from vlit_assets.core.scored.quality import QualityConfig
from vlit_assets.core.scored.shards import MappedEmbedder
from vlit_assets.core.scored.stage import score_source
from vlit_assets.core.shards import runs_metadata

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "score_distributed"


class EncodeClock:
    """Seconds spent in the stage's encoder calls (the driver's wall time, shards included)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, encode):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return encode(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def imported(bench: Path) -> tuple[Path, str]:
    """A DuckDB file holding the bench source's raw and generated tables."""
    OUT.mkdir(parents=True, exist_ok=True)
    db = OUT / f"{bench.name}.duckdb"
    name = bench.name
    if not db.exists():
        env = os.environ | {"DAGSTER_HOME": str(OUT / "dagster_home"), "VLIT_OUTPUT_DIR": str(OUT)}
        Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "vlit_assets.cli", "run", "--no-llm", "--stage",
               "generated", "--source", str(bench), "--db", str(db)]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return db, name


def score(db: Path, source: str, mapper, label: str) -> dict[str, object]:
    copy = OUT / f"{label}.duckdb"
    shutil.copyfile(db, copy)
    embedder = MiniLMEmbedder()
    clock = EncodeClock()
    # Local: the model's encode; Ray: the shard map's, so shipping texts and vectors counts.
    owner = MiniLMEmbedder if mapper is None else MappedEmbedder
    original = owner.encode
    owner.encode = clock.wrap(original)
    start = time.perf_counter()
    try:
        with duckdb.connect(str(copy)) as con:
            outcome = score_source(
                con, source, config=QualityConfig(semantic="on"), embedder=lambda: embedder,
                image_text=None, run_id="bench", mapper=mapper,
            )  # fmt: skip
    finally:
        owner.encode = original
    return {
        "mode": label,
        "rows": outcome.result.scored.height,
        "wall_s": time.perf_counter() - start,
        "embed_s": clock.seconds,
        "texts": outcome.result.encoded_texts,
        "scored": outcome.result.scored,
        "meta": runs_metadata(mapper.runs) if mapper is not None else {},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("/work/benchdata/qc/llava_10000"))
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args()
    db, source = imported(args.bench)
    local = score(db, source, None, "local")
    from vlit_assets.distributed.ray_map import connect
    from vlit_assets.testing.ray_cluster import local_cluster

    start = time.perf_counter()
    with local_cluster(workers=1, cpus_per_node=args.cpus_per_node) as cluster:
        up = time.perf_counter() - start
        with connect(cluster.address) as mapper:
            ray = score(db, source, mapper, "ray")
    equal = local["scored"].equals(ray["scored"])
    print(f"\nscoring {source}: {local['rows']:,} rows, semantic=on, empty embedding cache")
    print(f"cluster start (head + 1 worker node, {args.cpus_per_node} CPU each): {up:.1f} s")
    print(f"{'mode':<6} {'wall s':>8} {'embed s':>8} {'texts':>8} {'ms/text':>8} {'ms/row':>8}")
    for r in (local, ray):
        per_text = 1000 * r["embed_s"] / max(1, r["texts"])
        per_row = 1000 * r["embed_s"] / max(1, r["rows"])
        print(f"{r['mode']:<6} {r['wall_s']:>8.1f} {r['embed_s']:>8.1f} {r['texts']:>8,} "
              f"{per_text:>8.2f} {per_row:>8.2f}")  # fmt: skip
    for key, value in ray["meta"].items():
        print(f"  {key}: {value}")
    print(f"scored tables equal row for row, bit for bit: {equal}")


if __name__ == "__main__":
    main()
