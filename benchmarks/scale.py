"""Scaling of whole `vlit run --no-llm` processes: local mode against 1, 2 and 4 Ray worker nodes.

Two inputs, each run in a fresh process with its own DAGSTER_HOME, DuckDB file and output folder
(as benchmarks/qc_bench.py runs them):

- ``qc``: the LLaVA bench folder of ``--qc-rows`` conversations (/work/benchdata/qc/llava_<n>,
  made by ../shared/bench/make_llava_bench.py when absent): raw import, scoring and the final
  stage. Rows = conversations read.
- ``gen``: a COCO-format set of ``--gen-images`` images derived from ../shared/coco-mini (its 80
  images repeated under new ids, each copy's JPEG made byte-distinct by a comment segment so the
  raw stage's duplicate-bytes check keeps it; pixels unchanged), run to ``--gen-stage``
  (default ``generated``: image validation, template generation, region rendering). Rows =
  conversations generated.

Each input runs in local mode (no ``VLIT_RAY_ADDRESS``) and then against a fresh local cluster
per worker count (``vlit_assets.testing.ray_cluster.local_cluster``: a head node with 0 CPUs and
N worker nodes of 1 CPU, each with its own raylet and object store), started before the timed
run, with ``VLIT_RAY_ADDRESS`` set in the child's environment.

Scheduling overhead = sum over the Dagster steps that reported ``compute/<step>/busy_s`` of
(that step's wall seconds x workers) - busy seconds: the worker-seconds a step held the cluster
without running the core function (task dispatch, argument and result transfer, worker start-up
and imports, slots idle while the driver prepares or merges shards). Steps that ran no Ray task
report no busy seconds and print "n/a".

    .venv/bin/python benchmarks/scale.py                               # 100k qc, 4,000-image gen
    .venv/bin/python benchmarks/scale.py --qc-rows 2000 --gen-images 400 --workers 1 2
    .venv/bin/python benchmarks/scale.py --only qc --json benchmarks/out/scale.json

Timings are of this machine at the time of the run; it has few cores, so more workers than cores
oversubscribe them (the header prints the core count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import threading
import time
from pathlib import Path

from qc_bench import bench_folder, run_measured, step_seconds

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "scale"
BENCH_DATA = Path("/work/benchdata/qc")
COPY_ID_STRIDE = 10_000_000  # new id = copy * stride + original id; coco-mini ids are below it


def coco_mini_dir() -> Path:
    path = Path(os.environ.get("VLIT_COCO_MINI", REPO.parent / "shared" / "coco-mini"))
    if not path.exists():
        raise SystemExit(f"coco-mini not found at {path}: set VLIT_COCO_MINI")
    return path


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes, the same pixels."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def coco_derived(root: Path, n_images: int, out: Path) -> Path:
    """A COCO-layout folder of n_images copies of coco-mini's images, written once per size."""
    folder = out / f"coco_{n_images}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    print(f"deriving {n_images:,} COCO images from {root} into {folder} ...", flush=True)
    ann = root / "annotations"
    inst = json.loads((ann / "instances_train2017.json").read_text())
    caps = json.loads((ann / "captions_train2017.json").read_text())
    base = inst["images"]
    by_image: dict[str, dict[int, list[dict]]] = {"inst": {}, "caps": {}}
    for key, doc in (("inst", inst), ("caps", caps)):
        for a in doc["annotations"]:
            by_image[key].setdefault(a["image_id"], []).append(a)
    images_dir = folder / "train2017"
    images_dir.mkdir(parents=True)
    images, objects, captions = [], [], []
    originals = {
        im["file_name"]: (root / "train2017" / im["file_name"]).read_bytes() for im in base
    }
    for k in range(n_images):
        copy, im = divmod(k, len(base))
        src = base[im]
        new_id = copy * COPY_ID_STRIDE + src["id"]
        name = f"c{copy:05d}_{src['file_name']}"
        (images_dir / name).write_bytes(_with_comment(originals[src["file_name"]], f"copy {copy}"))
        images.append({**src, "id": new_id, "file_name": name})
        for key, rows in (("inst", objects), ("caps", captions)):
            for a in by_image[key].get(src["id"], []):
                rows.append({**a, "id": copy * COPY_ID_STRIDE + a["id"], "image_id": new_id})
    (folder / "annotations").mkdir()
    for name, doc, rows in (
        ("instances_train2017.json", inst, objects),
        ("captions_train2017.json", caps, captions),
    ):
        body = {**doc, "images": images, "annotations": rows}
        (folder / "annotations" / name).write_text(json.dumps(body))
    done.write_text(f"{n_images}\n")
    return folder


_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> tuple[int, dict[int, float]]:
    """Summed RSS bytes of every descendant of ``root`` and each one's own CPU seconds (user +
    system, without its children's), read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    figures: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:  # ended between the listing and the read
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        rss = int(found.group(1)) * 1024 if found else 0
        figures[int(entry.name)] = (rss, (int(fields[11]) + int(fields[12])) / _TICK)
    rss_total, cpu, todo = 0, {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        rss, own = figures.get(pid, (0, 0.0))
        rss_total += rss
        cpu[pid] = own
        todo.extend(children.get(pid, []))
    return rss_total, cpu


class TreeSampler:
    """This process's descendants (the vlit run, its pools, the cluster's processes) sampled every
    half second: peak summed RSS (shared object-store pages count once per process) and a
    cumulative CPU seconds series, from which ``cpu_between`` reads the CPU a step used.

    A process that ended keeps the CPU it had at its last sample: Ray ends a job's workers when
    the driver disconnects (each step is a driver), and pool processes end with their pool.
    What a process did in its last half second, or in a life shorter than that, is not counted.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.samples: list[tuple[float, float]] = []  # (epoch s, cumulative CPU s)
        self._ended = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss, cpu = _descendants(os.getpid())
            self._ended += sum(v for pid, v in self._last.items() if pid not in cpu)
            self._last = cpu
            self.peak = max(self.peak, rss)
            self.samples.append((time.time(), self._ended + sum(cpu.values())))
            self._stop.wait(0.5)

    def cpu_at(self, when: float) -> float:
        """CPU seconds at ``when``, interpolated between the samples around it."""
        before = [x for x in self.samples if x[0] <= when]
        after = [x for x in self.samples if x[0] >= when]
        if not before or not after:
            return (before or after)[-1 if before else 0][1]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)

    def cpu_between(self, start: float, end: float) -> float:
        return max(0.0, self.cpu_at(end) - self.cpu_at(start))

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def step_windows(home: Path) -> list[tuple[str, float, float]]:
    """(step key, start, end) in epoch seconds of every step of every run in ``home``."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    windows = []
    for run in instance.get_runs():
        for s in instance.get_run_step_stats(run.run_id):
            if s.start_time and s.end_time:
                windows.append((s.step_key, s.start_time, s.end_time))
    return sorted(windows, key=lambda w: w[1])


_BUSY = re.compile(r"^compute/(.+)/busy_s$")


def compute_figures(home: Path, workers: int) -> dict:
    """Shards, nodes, retries, busy and step seconds of every run in ``home``'s instance, from
    the ``compute/...`` metadata the steps wrote on their materializations."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    steps: dict[str, dict] = {}
    placement: set[str] = set()
    for run in instance.get_runs():
        walls = {
            s.step_key: s.end_time - s.start_time
            for s in instance.get_run_step_stats(run.run_id)
            if s.start_time and s.end_time
        }
        records = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        ).records
        for record in records:
            entry = record.event_log_entry
            meta = entry.dagster_event.step_materialization_data.materialization.metadata
            for key, value in meta.items():
                if key == "compute":
                    placement.add(str(value.value))
                found = _BUSY.match(key)
                if not found:
                    continue
                # A multi-asset step writes the same figures on each of its assets: once per step.
                step = steps.setdefault(entry.step_key, {"wall": walls.get(entry.step_key)})
                name = found.group(1)
                step[name] = {
                    "busy_s": float(value.value),
                    "shards": int(meta[f"compute/{name}/shards"].value),
                    "retries": int(meta[f"compute/{name}/retries"].value),
                    "per_node": str(meta[f"compute/{name}/shards_per_node"].value),
                }
    if not steps:
        return {"placement": sorted(placement), "steps": {}}
    busy = sum(v["busy_s"] for s in steps.values() for k, v in s.items() if k != "wall")
    wall = sum(s["wall"] or 0.0 for s in steps.values())
    nodes = {
        part.split(":")[0].strip()
        for s in steps.values()
        for k, v in s.items()
        if k != "wall"
        for part in v["per_node"].split(",")
    }
    return {
        "placement": sorted(placement),
        "steps": steps,
        "busy_s": busy,
        "ray_steps_wall_s": wall,
        "overhead_s": wall * workers - busy if workers else None,
        "shards": sum(v["shards"] for s in steps.values() for k, v in s.items() if k != "wall"),
        "retries": sum(v["retries"] for s in steps.values() for k, v in s.items() if k != "wall"),
        "nodes": len(nodes),
    }


def output_rows(home: Path, kind: str) -> int | None:
    """Conversations generated (gen) or read (qc), from the runs' row-count metadata."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    asset = "generated__conversations" if kind == "gen" else "raw__conversations"
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    value = meta.get("dagster/row_count")
    return int(value.value) if value is not None else None


def run_case(kind: str, folder: Path, workers: int, work: Path, stage: str | None) -> dict:
    """One `vlit run --no-llm` in a fresh process; workers 0 = local mode, else a fresh cluster."""
    from contextlib import ExitStack

    if work.exists():
        shutil.rmtree(work)
    home = work / "dagster_home"
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "VLIT_DATA_DIR": str(work / "data"),
        "VLIT_OUTPUT_DIR": str(work / "data"),
        "VLIT_LLM_BASE_URL": "",
        "VLIT_LLM_MODEL": "",
    }
    env.pop("VLIT_RAY_ADDRESS", None)
    vlit = Path(sys.executable).with_name("vlit")
    cmd = [str(vlit), "run", "--no-llm", "--source", str(folder), "--name", "bench"]
    cmd += ["--db", str(work / "warehouse.duckdb"), *(["--stage", stage] if stage else [])]
    with ExitStack() as stack:
        start_s = None
        if workers:
            from vlit_assets.testing.ray_cluster import local_cluster

            t0 = time.perf_counter()
            cluster = stack.enter_context(local_cluster(workers=workers, head_cpus=0))
            start_s = time.perf_counter() - t0
            env["VLIT_RAY_ADDRESS"] = cluster.address
        sampler = stack.enter_context(TreeSampler())
        wall, peak, code = run_measured(cmd, env=env, cwd=REPO, log=work / "vlit_run.log")
    text = (work / "vlit_run.log").read_text(errors="replace")
    cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", text)]
    return {
        "input": kind,
        "mode": "ray" if workers else "local",
        "workers": workers,
        "cluster_start_s": start_s,
        "wall_s": wall,
        "exit": code,
        "log": str(work / "vlit_run.log"),
        "rows": output_rows(home, kind),
        "cpu_s_vlit": sum(cpu) if len(cpu) == 2 else None,  # user + sys, from /usr/bin/time
        "peak_rss_vlit_gb": peak,
        "peak_rss_tree_gb": sampler.peak / 1024**3,
        "steps_s": step_seconds(text),
        # wall and CPU seconds of every process of the run (vlit, its pools, the cluster)
        "steps_cpu": [
            {"step": key, "wall_s": end - start, "cpu_s": sampler.cpu_between(start, end)}
            for key, start, end in step_windows(home)
        ],
        "compute": compute_figures(home, workers),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table_rows(results: list[dict]) -> list[tuple[str, ...]]:
    local = {r["input"]: r for r in results if r["mode"] == "local" and r["exit"] == 0}
    rows = []
    for r in results:
        rate = r["rows"] / r["wall_s"] if r["rows"] and r["exit"] == 0 else None
        base = local.get(r["input"])
        speedup = base["wall_s"] / r["wall_s"] if base and r["exit"] == 0 else None
        c = r["compute"]
        overhead = c.get("overhead_s")
        held = c["ray_steps_wall_s"] * r["workers"] if c.get("ray_steps_wall_s") else None
        rows.append(
            (
                r["input"],
                r["mode"],
                str(r["workers"]) if r["workers"] else "-",
                _fmt(r["rows"], ","),
                _fmt(r["wall_s"], ".1f") + ("" if r["exit"] == 0 else f" EXIT {r['exit']}"),
                _fmt(r["cpu_s_vlit"], ".1f"),
                _fmt(rate, ",.0f"),
                _fmt(rate / r["workers"] if rate and r["workers"] else None, ",.0f"),
                _fmt(speedup, ".2f"),
                _fmt(c.get("busy_s"), ".1f"),
                _fmt(overhead, ".1f")
                + (f" ({overhead / held:.0%})" if overhead is not None and held else ""),
                _fmt(c.get("shards"), "d"),
                _fmt(c.get("nodes"), "d"),
                _fmt(c.get("retries"), "d"),
                _fmt(r["peak_rss_vlit_gb"], ".2f"),
                _fmt(r["peak_rss_tree_gb"], ".2f"),
            )
        )
    return rows


HEADER = (
    "input", "mode", "workers", "rows", "wall s", "vlit cpu s", "rows/s", "rows/s/worker",
    "x local", "busy s", "overhead s", "shards", "nodes", "retries", "RSS vlit GB", "RSS all GB",
)  # fmt: skip


def print_table(results: list[dict]) -> None:
    rows = table_rows(results)
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(
        "\nvlit cpu s = user + system CPU seconds of the vlit process (not of Ray workers);"
        " rows/s/worker = rows/s / Ray worker nodes; x local = local wall / this wall; busy s ="
        " core-function seconds the Ray steps reported (compute/<step>/busy_s);\noverhead s ="
        " sum over those steps of (step wall x workers) - busy s, with its share of the"
        " worker-seconds held; n/a = no step reported Ray tasks;\nRSS vlit = peak of the vlit"
        " process (the Ray driver); RSS all = peak summed RSS of vlit and every cluster process"
        " (shared object-store pages counted per process)."
    )
    print_step_table(results)
    for r in results:
        steps = r["compute"]["steps"]
        if r["exit"] != 0:
            print(f"\n{r['input']} {r['mode']} x{r['workers']}: exit {r['exit']}, see {r['log']}")
        if not steps:
            continue
        print(f"\n{r['input']} {r['mode']} x{r['workers']}: Ray steps")
        for step, figures in steps.items():
            for name, v in figures.items():
                if name == "wall":
                    continue
                print(
                    f"  {step:<28} {name:<22} wall {_fmt(figures['wall'], '.2f')} s, busy"
                    f" {v['busy_s']:.2f} s, {v['shards']} shards, {v['retries']} retries,"
                    f" {v['per_node']}"
                )


def print_step_table(results: list[dict]) -> None:
    """Per input: each step's wall and CPU seconds (all processes of the run) in every mode."""
    for kind in dict.fromkeys(r["input"] for r in results):
        runs = [r for r in results if r["input"] == kind]
        labels = [f"{r['mode']} x{r['workers']}" if r["workers"] else r["mode"] for r in runs]
        cells: dict[str, list[str]] = {}
        for i, r in enumerate(runs):
            for step in r["steps_cpu"]:
                row = cells.setdefault(step["step"], [""] * len(runs))
                row[i] = f"{step['wall_s']:.1f} / {step['cpu_s']:.1f}"
        head = (f"{kind}: step (wall s / CPU s)", *labels)
        rows = [(step, *row) for step, row in cells.items()]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        print()
        for row in [head, tuple("-" * w for w in widths), *rows]:
            print(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
    print(
        "CPU s = user + system seconds of every process of the run in the step's window (vlit,"
        " its process pools, the cluster's raylets and workers), sampled every 0.5 s; a process"
        " that ended keeps its last sample."
    )


def header(args: argparse.Namespace) -> dict:
    import ray

    cores = os.cpu_count() or 0
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cores": cores,
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3, 1),
        "load_average_start": os.getloadavg(),
        "ray": ray.__version__,
        "python": platform.python_version(),
        "qc_rows": args.qc_rows,
        "gen_images": args.gen_images,
        "gen_stage": args.gen_stage,
        "workers": args.workers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qc-rows", type=int, default=100_000, help="LLaVA bench conversations")
    parser.add_argument("--gen-images", type=int, default=4_000, help="COCO-derived images")
    parser.add_argument(
        "--gen-stage",
        default="generated",
        choices=["raw", "generated", "scored", "all"],
        help="how far the gen input runs (all = through final)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--only", choices=["qc", "gen"], help="one input only")
    parser.add_argument("--no-local", action="store_true", help="skip the local-mode runs")
    parser.add_argument("--data", type=Path, default=BENCH_DATA, help="bench folders")
    parser.add_argument("--out", type=Path, default=OUT, help="run folders (replaced)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    head = header(args)
    load = ", ".join(f"{x:.2f}" for x in head["load_average_start"])
    print(
        f"scale bench {head['date']} on {head['host']}: {head['cores']} cores,"
        f" {head['memory_gb']} GB, load average {load}; ray {head['ray']},"
        f" python {head['python']}"
    )
    over = [w for w in args.workers if w > head["cores"]]
    if over:
        print(
            f"NOTE: {', '.join(map(str, over))} worker node(s) of 1 CPU on {head['cores']} cores"
            " oversubscribe the machine (the driver and the head node need CPU too)."
        )
    inputs = []
    if args.only in (None, "qc"):
        inputs.append(("qc", bench_folder(args.qc_rows, args.data), None))
    if args.only in (None, "gen"):
        stage = None if args.gen_stage == "all" else args.gen_stage
        inputs.append(("gen", coco_derived(coco_mini_dir(), args.gen_images, args.data), stage))
    results = []
    for kind, folder, stage in inputs:
        for workers in ([] if args.no_local else [0]) + args.workers:
            label = f"ray x{workers}" if workers else "local"
            print(f"{kind} ({folder.name}) {label} ...", flush=True)
            result = run_case(kind, folder, workers, args.out / f"{kind}_{label}", stage)
            results.append(result)
            print(f"  {result['wall_s']:.1f} s, exit {result['exit']}", flush=True)
    head["load_average_end"] = os.getloadavg()
    print()
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": head, "runs": results}, indent=2, default=str))
        print(f"\nfigures written to {args.json}")
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
