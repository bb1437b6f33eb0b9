"""`vlit run --no-llm` in Ray mode gives local mode's tables and exports, also with a node killed.

Each run is a `vlit run` process of its own, as a user starts it, with ``VLIT_RAY_ADDRESS``
naming a two-node cluster on 127.0.0.1 (Ray mode) or unset (local mode), and its own
DAGSTER_HOME, warehouse and outputs. Runs that are compared with local mode run one after
another in the same directory and are moved aside afterwards, so the files that hold absolute
paths (exports, manifest hashes) compare byte for byte; only run ids and timestamps may differ.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from vlit_assets.core import warehouse
from vlit_assets.core.schemas import TABLES
from vlit_assets.distributed.ray_map import ADDRESS_ENV
from vlit_assets.testing.compare import export_differences, table_differences
from vlit_assets.testing.ray_cluster import local_cluster

pytestmark = pytest.mark.slow

TABLE_ROOT_ENV = "VLIT_TABLE_ROOT"

REPO = Path(__file__).resolve().parents[2]
COMPUTE_LINE = re.compile(r"compute: ray at (\S+), (\d+) shards on (\d+) nodes, (\d+) retries")
# The stages whose heavy work runs on the cluster, and the tables they write.
RAY_STAGE_TABLES = [n for n, t in TABLES.items() if t.stage in ("raw", "generated")]


@dataclass
class Run:
    dir: Path  # DAGSTER_HOME, warehouse and outputs of the run
    code: int
    log: str
    seconds: float

    @property
    def db(self) -> Path:
        return self.dir / "warehouse.duckdb"

    @property
    def exports(self) -> Path:
        (version,) = (self.dir / "data" / "exports").glob("v-*")
        return version

    def compute(self) -> tuple[str, int, int, int]:
        """Address, shards, nodes and retries from the run's `compute:` line."""
        match = COMPUTE_LINE.search(self.log)
        assert match, f"no 'compute: ray' line in the output of {self.dir}"
        address, *numbers = match.groups()
        shards, nodes, retries = map(int, numbers)
        return address, shards, nodes, retries


def _start(
    work: Path,
    source: Path,
    name: str,
    address: str | None,
    *,
    stage: str | None = None,
    files: bool = False,
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != ADDRESS_ENV and not k.startswith("VLIT_")}
    env |= {
        "DAGSTER_HOME": str(work / "dagster_home"),
        "VLIT_DATA_DIR": str(work / "data"),
        "VLIT_OUTPUT_DIR": str(work / "data"),
        "VLIT_LLM_BASE_URL": "",
        "VLIT_LLM_MODEL": "",
        "VLIT_LLM_API_KEY": "",
        # keeps the driver on the loopback address of the test cluster (testing.ray_cluster)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    if address:
        env[ADDRESS_ENV] = address
    if files:  # the large tables as Parquet shards published by manifests (core.tablestore)
        env[TABLE_ROOT_ENV] = str(work / "tables")
    cmd = [sys.executable, "-m", "vlit_assets.cli", "run", "--source", str(source),
           "--name", name, "--db", str(work / "warehouse.duckdb"), "--no-llm"]  # fmt: skip
    if stage:
        cmd += ["--stage", stage]
    work.mkdir(parents=True, exist_ok=True)
    with (work / f"{name}.log").open("w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, work: Path, name: str, started: float) -> Run:
    code = proc.wait(timeout=600)
    return Run(work, code, (work / f"{name}.log").read_text(), time.monotonic() - started)


def _run_at(
    base: Path,
    label: str,
    source: Path,
    name: str,
    address: str | None,
    *,
    stage: str | None = None,
    watch: Callable[[subprocess.Popen], None] | None = None,
    files: bool = False,
) -> Run:
    """A run in ``base/run``, the same path for every run, then moved to ``base/label``."""
    work = base / "run"
    assert not work.exists()
    started = time.monotonic()
    proc = _start(work, source, name, address, stage=stage, files=files)
    if watch is not None:
        watch(proc)
    run = _finish(proc, work, name, started)
    work.rename(base / label)
    run.dir = base / label
    assert run.code == 0, f"{label}: vlit run exited {run.code}\n{run.log[-3000:]}"
    return run


def _assert_same(
    local: Run, ray: Run, base: Path, tables: list[str] | None = None, files: bool = False
) -> None:
    table_roots = (None, str(ray.dir / "tables") if files else None)
    differences = table_differences(
        local.db, ray.db, roots=[base / "run"], tables=tables, table_roots=table_roots
    )
    assert not differences, "\n".join(map(str, differences))
    if tables is None:
        exported = export_differences(local.exports, ray.exports, roots=[base / "run"])
        assert not exported, "\n".join(map(str, exported))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def bench_10k(tmp_path_factory: pytest.TempPathFactory, make_bench) -> Path:
    """A 10k-conversation LLaVA bench folder (see ../shared/bench/README.md), an import source."""
    return make_bench(tmp_path_factory.mktemp("bench10k"), 10_000)


@pytest.fixture(scope="module")
def local_coco(base: Path, coco_mini: Path) -> Run:
    return _run_at(base, "coco-local", coco_mini, "coco-mini", None)


@pytest.fixture(scope="module")
def local_bench(base: Path, bench_10k: Path) -> Run:
    return _run_at(base, "bench-local", bench_10k, "bench", None)


def test_coco_mini_in_ray_mode_equals_local_mode(
    base: Path, local_coco: Run, ray_cluster, coco_mini: Path
) -> None:
    ray = _run_at(base, "coco-ray", coco_mini, "coco-mini", ray_cluster.address)
    _assert_same(local_coco, ray, base)
    address, shards, nodes, retries = ray.compute()
    assert address == ray_cluster.address and nodes == 2 and retries == 0
    # image checks, template writing and region rendering: at least two shards each
    assert shards >= 6
    assert "compute: local" in local_coco.log and "compute: ray" not in local_coco.log
    print(f"coco-mini: local {local_coco.seconds:.1f} s, ray {ray.seconds:.1f} s")


def test_coco_mini_on_ray_with_table_files_equals_local_duckdb_mode(
    base: Path, local_coco: Run, ray_cluster, coco_mini: Path
) -> None:
    """The whole distributed configuration: heavy work on the cluster, large tables as
    Parquet shards under a table root; every table and export equals the all-local default."""
    ray = _run_at(base, "coco-ray-files", coco_mini, "coco-mini", ray_cluster.address, files=True)
    _assert_same(local_coco, ray, base, files=True)
    assert list((ray.dir / "tables" / "_manifests").glob("source=*.json"))
    with warehouse.connect(ray.db, read_only=True) as con:  # without the root: not in the file
        assert not warehouse.table_exists(con, "scored__conversations")
    assert ray.compute()[2] == 2


def test_bench_10k_in_ray_mode_equals_local_mode(
    base: Path, local_bench: Run, ray_cluster, bench_10k: Path
) -> None:
    ray = _run_at(base, "bench-ray", bench_10k, "bench", ray_cluster.address)
    _assert_same(local_bench, ray, base)
    _, shards, nodes, retries = ray.compute()
    assert shards >= 2 and nodes == 2 and retries == 0
    print(f"bench 10k: local {local_bench.seconds:.1f} s, ray {ray.seconds:.1f} s")


def test_a_worker_node_killed_mid_run_loses_and_doubles_no_row(
    base: Path, local_coco: Run, coco_mini: Path
) -> None:
    """The worker node is killed while it runs a shard; that shard runs again on the head node,
    and the tables of the stages that ran on the cluster equal local mode's."""
    killed: list[str] = []
    with local_cluster(workers=1) as cluster:

        def kill_while_it_runs_a_shard(proc: subprocess.Popen) -> None:
            while proc.poll() is None and not killed:
                if cluster.running(0):
                    killed.append(cluster.kill_worker(0))
                time.sleep(0.01)

        run = _run_at(
            base, "coco-killed", coco_mini, "coco-mini", cluster.address,
            stage="generated", watch=kill_while_it_runs_a_shard,
        )  # fmt: skip
    assert killed, "the worker node never ran a shard, so nothing was killed"
    _assert_same(local_coco, run, base, tables=RAY_STAGE_TABLES)
    _, shards, _, retries = run.compute()
    assert retries >= 1 and shards >= 6


def test_two_sources_at_once_on_one_warehouse(
    tmp_path: Path, base: Path, local_coco: Run, local_bench: Run, ray_cluster, coco_mini: Path,
    bench_10k: Path,
) -> None:  # fmt: skip
    """Two `vlit run` processes, two sources, one DAGSTER_HOME and warehouse, one cluster."""
    work = tmp_path / "both"
    started = time.monotonic()
    procs = {
        name: _start(work, source, name, ray_cluster.address, stage="generated")
        for name, source in (("coco-mini", coco_mini), ("bench", bench_10k))
    }
    runs = {name: _finish(proc, work, name, started) for name, proc in procs.items()}
    for name, run in runs.items():
        assert run.code == 0, f"{name}: vlit run exited {run.code}\n{run.log[-3000:]}"
        assert "WarehouseBusy" not in run.log and "Could not set lock" not in run.log
        assert run.compute()[1] >= 2
    with dg.DagsterInstance.from_config(str(work / "dagster_home")) as instance:
        windows = [(r.start_time, r.end_time) for r in instance.get_run_records()]
    assert len(windows) == 2
    assert max(s for s, _ in windows) < min(e for _, e in windows), "the runs did not overlap"
    for name, local in (("coco-mini", local_coco), ("bench", local_bench)):
        differences = table_differences(
            local.db, work / "warehouse.duckdb", roots=[base / "run", work],
            tables=RAY_STAGE_TABLES, source=name,
        )  # fmt: skip
        assert not differences, "\n".join(map(str, differences))
