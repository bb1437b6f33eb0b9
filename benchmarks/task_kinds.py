"""Task-kind inference (core/scored/task_kinds.py): throughput on bench data, precision.

Run: ``POLARS_MAX_THREADS=1 .venv/bin/python benchmarks/task_kinds.py [--data B100K.JSONL]``.
Without ``--data`` it writes 100k bench conversations with ../shared/bench/make_llava_bench.py
into a temp dir. Prints:

- throughput of ``infer_task_kinds`` on the bench file (wall and CPU seconds, best of
  ``--repeat``; target >= 200,000 conversations per CPU-second on one core), also on the file
  repeated ``--scale`` times;
- the inferred type and kind mix of the bench file (it has no true types);
- precision and recall per paper type on coco-mini template output (several seeds) and on
  ../shared/paper-examples, whose types are known.

Set ``POLARS_MAX_THREADS`` before starting (the default here is 1, for a one-core figure).
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # read by polars at import: set it first

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import polars as pl  # noqa: E402

from vlit_assets.core.formats.files import load_instruction_file  # noqa: E402
from vlit_assets.core.generated.templates.run import TemplateConfig, generate_templates  # noqa: E402
from vlit_assets.core.raw.annotations import find_coco_files  # noqa: E402
from vlit_assets.core.raw.collect import collect_source  # noqa: E402
from vlit_assets.core.scored.task_kinds import infer_task_kinds, type_precision_recall  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TURNS = pl.List(pl.Struct({"from": pl.String, "value": pl.String}))


def _shared(env: str, name: str) -> Path:
    return Path(os.environ.get(env, SHARED / name))


def load_bench(path: Path) -> pl.DataFrame:
    """A LLaVA JSONL file in the generated__conversations shape (conversation_id, turns)."""
    raw = pl.read_ndjson(path, schema={"id": pl.String, "conversations": TURNS})
    return raw.select(conversation_id="id", turns="conversations")


def make_bench(n: int, out_dir: Path) -> Path:
    out = out_dir / f"bench_{n}.jsonl"
    script = _shared("VLIT_BENCH", "bench") / "make_llava_bench.py"
    subprocess.run([sys.executable, str(script), "--n", str(n), "--out", str(out)], check=True)
    return out


def time_inference(df: pl.DataFrame, repeat: int) -> tuple[float, float, pl.DataFrame]:
    """(best wall s, best CPU s, result) of infer_task_kinds over ``repeat`` runs."""
    best_wall = best_cpu = float("inf")
    out = pl.DataFrame()
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = infer_task_kinds(df)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, out


def template_conversations(seeds: list[int], regions_dir: Path) -> pl.DataFrame:
    root = _shared("VLIT_COCO_MINI", "coco-mini")
    result = collect_source("coco-mini", root)
    frames = (result.images, result.captions, result.objects, result.categories, result.tags)
    parts = [
        generate_templates(
            *frames,
            source="coco-mini",
            image_root=find_coco_files(root).image_dir,
            regions_dir=regions_dir,
            config=TemplateConfig(seed=seed, render_regions=False, workers=1),
        )
        for seed in seeds
    ]
    return pl.concat(parts).filter(pl.col("drop_reason").is_null())


def print_precision(title: str, df: pl.DataFrame) -> None:
    inferred = infer_task_kinds(df)
    table = type_precision_recall(df["instruction_type"], inferred["inferred_type"])
    print(f"\n{title}: {df.height} conversations")
    print(f"{'type':<10} {'true':>6} {'inferred':>9} {'hits':>6} {'precision':>10} {'recall':>8}")
    for r in table.iter_rows(named=True):
        p = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rc = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        print(
            f"{r['type']:<10} {r['n_true']:>6} {r['n_inferred']:>9} {r['hits']:>6} {p:>10} {rc:>8}"
        )
    kinds = (
        inferred.with_columns(truth=df["instruction_type"])
        .explode("task_kinds")
        .group_by("truth", "task_kinds")
        .len()
        .sort("truth", "len", descending=[False, True])
    )
    for truth, part in kinds.group_by("truth", maintain_order=True):
        mix = ", ".join(f"{k} {n}" for k, n in part.select("task_kinds", "len").iter_rows())
        print(f"  kinds in {truth[0]}: {mix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="LLaVA JSONL (default: make 100k bench rows)")
    parser.add_argument("--n", type=int, default=100_000, help="rows to make without --data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", type=int, default=10, help="also time the file repeated N times")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_bench(args.n, Path(tmp))
        df = load_bench(data)
        print(f"POLARS_MAX_THREADS={os.environ['POLARS_MAX_THREADS']}; {data}")
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(
            f"{'input':<28} {'n':>9} {'wall s':>8} {'cpu s':>8} {'conv/s':>10} {'conv/cpu-s':>11}"
        )
        out = pl.DataFrame()
        for label, frame in (
            ("bench", df),
            (f"bench x{args.scale}", pl.concat([df] * args.scale) if args.scale > 1 else None),
        ):
            if frame is None:
                continue
            wall, cpu, result = time_inference(frame, args.repeat)
            if label == "bench":
                out = result
            print(
                f"{label:<28} {frame.height:>9} {wall:>8.3f} {cpu:>8.3f} "
                f"{frame.height / wall:>10,.0f} {frame.height / cpu:>11,.0f}"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")

        print("\nbench types (no truth):")
        for t, e, n in out.group_by("inferred_type", "type_evidence").len().sort("len").iter_rows():
            print(f"  {t!s:<9} {e!s:<17} {n:>7}")
        kinds = out.explode("task_kinds").group_by("task_kinds").len().sort("len", descending=True)
        print("bench kinds: " + ", ".join(f"{k} {n}" for k, n in kinds.iter_rows()))

        templates = template_conversations(args.seeds, Path(tmp) / "regions")
        print_precision(f"coco-mini template output, seeds {args.seeds}", templates)
        paper = load_instruction_file(
            _shared("VLIT_PAPER_EXAMPLES", "paper-examples") / "examples.json", source="paper"
        ).rows
        print_precision("paper examples", paper)


if __name__ == "__main__":
    main()
