"""Can this machine run a two-node Ray cluster for the tests, and what does it cost? Measured.

Run: ``.venv/bin/python benchmarks/ray_cluster_probe.py`` (needs the ``[ray]`` extra).

A ``ray.cluster_utils.Cluster`` on 127.0.0.1: a head and one worker node, one CPU each (at most
two task processes at once), each with its own small object store. It measures:

1. start: the cluster up and the driver connected, both nodes alive;
2. idle memory: the RSS of every process the cluster started (children of this driver), summed;
3. per-task overhead: 200 no-op tasks submitted at once, and 50 run one after another;
4. a Ray Data ``map_batches`` over 10k rows calling a pure function, on both nodes;
5. the same map at 0.3 s per block, once undisturbed and once with the worker node killed (not
   gracefully) after it has finished two blocks: the run must still return exactly the 10k
   rows with the right values (task retries, and lineage reconstruction of the blocks that
   were in the dead node's object store);
6. tear-down: driver shutdown plus cluster shutdown.

Everything binds to 127.0.0.1; nothing is fetched at run time; usage statistics are off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# On Linux Ray swaps 127.0.0.1 for the host's outward address; this switch (meant for macOS and
# Windows) keeps every node, the GCS and the driver on the loopback address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

ROWS = 10_000
BLOCKS = 20
OBJECT_STORE = 100 * 1024**2
NODE_ARGS = {
    "num_cpus": 1,
    "object_store_memory": OBJECT_STORE,
    "include_dashboard": False,
    "node_ip_address": "127.0.0.1",
}


def row_digest(row_id: int) -> int:
    """The pure per-row function the tasks call: a stable 32-bit digest of the row id."""
    return int.from_bytes(hashlib.blake2b(str(row_id).encode(), digest_size=4).digest(), "big")


def make_mapper(markers: str, seconds_per_block: float):
    def mapper(batch: dict) -> dict:
        node = ray.get_runtime_context().get_node_id()
        time.sleep(seconds_per_block)  # stands in for real per-row work, so a kill lands mid-run
        batch["digest"] = np.array([row_digest(int(i)) for i in batch["id"]], dtype=np.int64)
        batch["node"] = np.array([node] * len(batch["id"]))
        Path(markers, f"{node}-{uuid.uuid4().hex}").touch()
        return batch

    return mapper


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def descendants(root: int) -> list[int]:
    """Every live process under ``root``, from /proc (Linux; no psutil in the venv)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier]
        found.extend(kids)
        frontier = kids
    return found


def cluster_rss_mb() -> tuple[float, int]:
    total, pids = 0, descendants(os.getpid())
    for pid in pids:
        with contextlib.suppress(OSError):  # the process ended between listing and reading
            total += _rss_bytes(pid)
    return total / 1e6, len(pids)


def run_map(markers: str, seconds_per_block: float) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    ds = ray.data.range(ROWS, override_num_blocks=BLOCKS).map_batches(
        make_mapper(markers, seconds_per_block), batch_format="numpy"
    )
    rows = ds.take_all()
    return time.perf_counter() - t0, rows


def check_rows(rows: list[dict]) -> str:
    ids = sorted(int(r["id"]) for r in rows)
    exact = ids == list(range(ROWS))
    values = all(int(r["digest"]) == row_digest(int(r["id"])) for r in rows)
    return f"{len(rows)} rows, ids exact={exact}, values right={values}"


def main() -> None:
    expected = sum(row_digest(i) for i in range(ROWS))
    assert expected > 0
    with tempfile.TemporaryDirectory(prefix="vlit-ray-") as tmp:
        t0 = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args=dict(NODE_ARGS))
        worker = cluster.add_node(**NODE_ARGS)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        start_s = time.perf_counter() - t0
        print(f"start: {start_s:.1f} s, {len(alive)} nodes alive, address {cluster.address}")

        time.sleep(2)
        rss, n_procs = cluster_rss_mb()
        print(
            f"idle memory: {rss:.0f} MB RSS in {n_procs} cluster processes; "
            f"driver {_rss_bytes(os.getpid()) / 1e6:.0f} MB"
        )

        @ray.remote(num_cpus=1)
        def noop() -> None:
            return None

        ray.get([noop.remote() for _ in range(10)])  # warm the worker processes
        t0 = time.perf_counter()
        ray.get([noop.remote() for _ in range(200)])
        batch_ms = (time.perf_counter() - t0) / 200 * 1000
        t0 = time.perf_counter()
        for _ in range(50):
            ray.get(noop.remote())
        serial_ms = (time.perf_counter() - t0) / 50 * 1000
        print(f"per task: {batch_ms:.2f} ms submitted together, {serial_ms:.2f} ms round trip")

        markers = Path(tmp, "markers")
        markers.mkdir()
        seconds, rows = run_map(str(markers), 0.05)
        nodes = {r["node"] for r in rows}
        print(f"ray data map, both nodes: {seconds:.1f} s, {check_rows(rows)}, nodes={len(nodes)}")
        print("memory after the map: {:.0f} MB RSS in {} processes".format(*cluster_rss_mb()))

        markers = Path(tmp, "markers-slow")
        markers.mkdir()
        seconds, rows = run_map(str(markers), 0.3)
        print(f"ray data map, 0.3 s per block, no kill: {seconds:.1f} s, {check_rows(rows)}")

        markers = Path(tmp, "markers-kill")
        markers.mkdir()
        worker_id = worker.node_id
        killed: dict[str, float] = {}

        def kill_when_busy() -> None:
            while not killed:
                if len(list(markers.glob(f"{worker_id}-*"))) >= 2:
                    killed["at"] = time.perf_counter()
                    cluster.remove_node(worker, allow_graceful=False)
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        t_start = time.perf_counter()
        seconds, rows = run_map(str(markers), 0.3)
        killer.join(timeout=1)
        on_worker = sum(r["node"] == worker_id for r in rows)
        done_on_worker = len(list(markers.glob(f"{worker_id}-*")))
        kill_at = f"{killed['at'] - t_start:.1f} s" if killed else "never (worker idle)"
        print(
            f"ray data map, worker killed at {kill_at}: {seconds:.1f} s, {check_rows(rows)}; "
            f"blocks the worker finished {done_on_worker}, rows kept from it {on_worker}, "
            f"blocks run in all {len(list(markers.iterdir()))} of {BLOCKS}"
        )

        t0 = time.perf_counter()
        ray.shutdown()
        cluster.shutdown()
        down_s = time.perf_counter() - t0
        print(
            "tear-down: {:.1f} s; left over: {:.0f} MB in {} processes".format(
                down_s, *cluster_rss_mb()
            )
        )


if __name__ == "__main__":
    main()
