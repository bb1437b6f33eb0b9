"""Quality control alone, end to end: a whole `vlit run` on flawed LLaVA data, beside Data-Juicer.

For each size, this generates (or reuses) a bench folder with ../shared/bench/make_llava_bench.py:
one JSONL of LLaVA conversations with planted exact copies, one-word near copies, terse and
degenerate answers, its images, and sidecars naming each planted row. It then runs
`vlit run --source <folder>` in a fresh process with its own DAGSTER_HOME, DuckDB file and
output folder, and prints:

- wall time and peak RSS of the whole process, and seconds per Dagster step;
- kept rows and dropped rows per first failing rule;
- recall of each planted kind (share of its rows dropped) and false drops among clean rows;
  for near copies also against the findable ones (word 5-gram Jaccard >= 0.7 with their source,
  counted by the generator);
- Data-Juicer's published figures from ../shared/bench/README.md beside ours, and with
  --dj-python (a venv with py-data-juicer 1.6.1) its seven-filter recipe run on the same file in
  the same benchmark run.

    .venv/bin/python benchmarks/qc_bench.py                  # 10k and 100k
    .venv/bin/python benchmarks/qc_bench.py --sizes 100000 --million
    .venv/bin/python benchmarks/qc_bench.py --sizes 10000 --dj-python /opt/dj/bin/python \\
        --dj-root /opt/data-juicer

Timings are of this machine at the time of the run; a shared machine is noisy, so run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"
OUT = REPO / "benchmarks" / "out" / "qc_bench"
TARGETS = {100_000: (56.0, 3.0), 1_000_000: (600.0, 8.0)}  # size: (wall s, peak GB)


def bench_folder(n: int, root: Path) -> Path:
    """A folder with bench.jsonl, its sidecars and images/, generated once per size."""
    folder = root / f"llava_{n}"
    jsonl = folder / "bench.jsonl"
    if not (jsonl.is_file() and (folder / "bench.truth.json").is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        print(f"generating {n:,} conversations in {folder} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(SHARED_BENCH / "make_llava_bench.py"),
                "--n",
                str(n),
                "--out",
                str(jsonl),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return folder


def _peak_children_gb() -> float:
    # ru_maxrss of the largest child waited for so far, in KiB on Linux
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2


def run_measured(cmd: list[str], *, env: dict, cwd: Path, log: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (GB, via /usr/bin/time -v when present) and exit code of cmd."""
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    full = [timer, "-v", *cmd] if timer else cmd
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            full, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    peak = int(found.group(1)) / 1024**2 if found else _peak_children_gb()
    return wall, peak, code


def step_seconds(log_text: str) -> dict[str, float]:
    """Seconds per step from the `seconds per step` blocks `vlit run` prints."""
    steps: dict[str, float] = {}
    block = False
    for line in log_text.splitlines():
        if line.startswith("seconds per step"):
            block = True
            continue
        if block:
            match = re.match(r"^  (\S+)\s+([0-9.]+)$", line)
            if match:
                steps[match.group(1)] = float(match.group(2))
            else:
                block = False
    return steps


def run_vlit(folder: Path, work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    (work / "dagster_home").mkdir(parents=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(work / "dagster_home"),
        "VLIT_DATA_DIR": str(work / "data"),
        "VLIT_OUTPUT_DIR": str(work / "data"),
        "VLIT_LLM_BASE_URL": "",
        "VLIT_LLM_MODEL": "",
    }
    db = work / "warehouse.duckdb"
    vlit = Path(sys.executable).with_name("vlit")
    cmd = [str(vlit), "run", "--source", str(folder), "--name", "bench", "--db", str(db)]
    wall, peak, code = run_measured(cmd, env=env, cwd=REPO, log=work / "vlit_run.log")
    text = (work / "vlit_run.log").read_text(errors="replace")
    return {
        "wall": wall,
        "peak_gb": peak,
        "code": code,
        "steps": step_seconds(text),
        "db": db,
        "log": work / "vlit_run.log",
    }


def quality_figures(folder: Path, db: Path) -> dict:
    """Kept/dropped per rule, recall per planted kind and false drops among clean rows."""
    kinds = (
        pl.read_csv(
            folder / "bench.kinds.tsv",
            separator="\t",
            has_header=False,
            new_columns=["id", "kind", "source_id"],
            schema_overrides={"source_id": pl.String},
        )
        .with_row_index("variant")
        .with_columns(pl.col("variant").cast(pl.Int64))
    )
    with duckdb.connect(str(db), read_only=True) as con:
        decided = con.execute(
            "SELECT s.variant::BIGINT AS variant, d.kept, d.first_failing_rule AS rule "
            "FROM final__decisions d JOIN scored__conversations s USING (conversation_id)"
        ).pl()
        exported = con.execute(
            "SELECT path FROM final__export_files WHERE format = 'llava'"
        ).fetchall()
    joined = kinds.join(decided, on="variant", how="left")
    per_kind = (
        joined.group_by("kind")
        .agg(
            rows=pl.len(),
            dropped=(~pl.col("kept").fill_null(True)).sum(),
            missing=pl.col("kept").is_null().sum(),
        )
        .sort("kind")
    )
    truth = json.loads((folder / "bench.truth.json").read_text())
    rules = (
        decided.group_by("rule")
        .len()
        .sort("len", descending=True)
        .with_columns(pl.col("rule").fill_null("(kept)"))
    )
    records = 0
    for (path,) in exported:
        records += len(json.loads(Path(path).read_text(encoding="utf-8")))
    return {
        "per_kind": per_kind,
        "rules": rules,
        "truth": truth,
        "kept": int(decided["kept"].sum()),
        "exported_records": records,
    }


def peer_figures() -> dict:
    """Data-Juicer's whole-process figures at 100k as published in ../shared/bench/README.md."""
    text = (SHARED_BENCH / "README.md").read_text()
    wall = re.search(r"in about ([0-9.]+) s of wall time", text)
    peak = re.search(r"peak ([0-9.]+) GB", text)
    return {
        "wall_100k": float(wall.group(1)) if wall else None,
        "peak_gb": float(peak.group(1)) if peak else None,
    }


def run_dj(dj_python: str, dj_root: Path, jsonl: Path, work: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    dj_work = work / "dj"
    if dj_work.exists():
        shutil.rmtree(dj_work)
    dj_work.mkdir(parents=True)
    cmd = [
        dj_python,
        "-m",
        "tools.process_data",
        "--config",
        str(SHARED_BENCH / "dj_all7.yaml"),
        "--dataset_path",
        str(jsonl),
        "--export_path",
        str(dj_work / "out.jsonl"),
        "--work_dir",
        str(dj_work / "work"),
        "--ds_cache_dir",
        str(dj_work / "cache"),
    ]
    wall, peak, code = run_measured(cmd, env=env, cwd=dj_root, log=dj_work / "dj.log")
    out = dj_work / "out.jsonl"
    kept = sum(1 for _ in out.open()) if out.exists() else None
    return {"wall": wall, "peak_gb": peak, "code": code, "kept": kept}


def report(n: int, ours: dict, figures: dict | None, peer: dict, dj: dict | None) -> None:
    print(f"\n=== {n:,} conversations ===")
    target = TARGETS.get(n)
    status = "exit 0" if ours["code"] == 0 else f"EXIT {ours['code']} (see {ours['log']})"
    line = f"vlit run: {ours['wall']:.1f} s wall, peak RSS {ours['peak_gb']:.2f} GB, {status}"
    if target:
        ok = ours["wall"] <= target[0] and ours["peak_gb"] <= target[1]
        line += (
            f"  (target <= {target[0]:.0f} s, <= {target[1]:.0f} GB: {'met' if ok else 'MISSED'})"
        )
    print(line)
    if ours["steps"]:
        print("seconds per step:")
        for step, seconds in ours["steps"].items():
            print(f"  {step:<45} {seconds:>8.2f}")
        inside = sum(ours["steps"].values())
        print(f"  {'(start-up, job set-up, summary, exit)':<45} {ours['wall'] - inside:>8.2f}")
    if peer["wall_100k"]:
        scaled = peer["wall_100k"] * n / 100_000
        print(
            f"Data-Juicer 1.6.1, 7 filters, np=2 (../shared/bench/README.md): "
            f"{peer['wall_100k']:.0f} s at 100k ({scaled:.0f} s scaled to this size), "
            f"peak {peer['peak_gb']} GB; ours is {scaled / ours['wall']:.1f}x faster"
        )
    if dj:
        print(
            f"Data-Juicer measured here: {dj['wall']:.1f} s wall, peak {dj['peak_gb']:.2f} GB, "
            f"kept {dj['kept']}, exit {dj['code']}; ours {dj['wall'] / ours['wall']:.1f}x faster"
        )
    if figures is None:
        return
    print(f"kept {figures['kept']:,}; exported LLaVA records {figures['exported_records']:,}")
    print("rows per first failing rule:")
    for rule, count in figures["rules"].iter_rows():
        print(f"  {rule:<30} {count:>9,}")
    print("planted kinds (dropped share):")
    for kind, rows, dropped, missing in figures["per_kind"].iter_rows():
        label = "false drops" if kind == "clean" else "recall"
        extra = f", {missing} not decided" if missing else ""
        print(f"  {kind:<10} {rows:>9,} rows  {label} {dropped / rows:7.2%} ({dropped:,}){extra}")
    near = figures["per_kind"].filter(pl.col("kind") == "near_dup")
    findable = figures["truth"].get("near_dups_with_jaccard5_ge_0.7")
    if near.height and findable:
        dropped = near["dropped"][0]
        print(
            f"  near_dup recall of the findable ({findable:,}, Jaccard >= 0.7): "
            f"{min(dropped, findable) / findable:.2%} ({dropped:,} dropped)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--million", action="store_true", help="also run 1,000,000")
    parser.add_argument("--data", type=Path, default=OUT / "data", help="bench folders")
    parser.add_argument("--dj-python", help="python of a venv with py-data-juicer==1.6.1")
    parser.add_argument("--dj-root", type=Path, help="Data-Juicer source root (has tools/)")
    args = parser.parse_args()
    sizes = [*args.sizes, *([1_000_000] if args.million else [])]
    peer = peer_figures()
    for n in sizes:
        folder = bench_folder(n, args.data)
        work = OUT / f"run_{n}"
        ours = run_vlit(folder, work)
        figures = quality_figures(folder, ours["db"]) if ours["code"] == 0 else None
        dj = None
        if args.dj_python:
            dj = run_dj(args.dj_python, args.dj_root or Path.cwd(), folder / "bench.jsonl", work)
        report(n, ours, figures, peer, dj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
