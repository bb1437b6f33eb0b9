"""A real multi-node Ray cluster on 127.0.0.1 for tests and benchmarks (head + worker nodes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# On Linux Ray swaps 127.0.0.1 for the host's outward address; this switch (meant for macOS and
# Windows) keeps every node, the GCS and the driver on the loopback address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

OBJECT_STORE = 150 * 1024**2


def node_args(cpus: int) -> dict[str, Any]:
    return {
        "num_cpus": cpus,
        "object_store_memory": OBJECT_STORE,
        "include_dashboard": False,
        "node_ip_address": "127.0.0.1",
    }


@dataclass
class LocalCluster:
    """The running cluster: its address, and the worker nodes a test may kill."""

    cluster: Any  # ray.cluster_utils.Cluster
    workers: list[Any]

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def kill_worker(self, index: int = 0) -> str:
        """Remove a worker node without grace (its tasks die with it); returns its node id."""
        node = self.workers.pop(index)
        self.cluster.remove_node(node, allow_graceful=False)
        return str(node.node_id)

    def running(self, index: int = 0, task: str = "_call") -> bool:
        """Whether a process of worker node ``index`` is executing ``task`` at this moment.

        Ray titles a worker process ``ray::<function name>`` while it runs a task (``_call``
        for every shard of ``RayMap``), and worker processes are children of their node's
        raylet; read from /proc, so Linux only.
        """
        raylet = self.workers[index].all_processes["raylet"][0].process.pid
        title = f"ray::{task}".encode()
        for proc in Path("/proc").iterdir():
            try:
                stat = (proc / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                if parent == raylet and (proc / "cmdline").read_bytes().startswith(title):
                    return True
            except (OSError, ValueError, IndexError):  # the process ended while we looked
                continue
        return False

    def add_worker(self, cpus: int = 1) -> None:
        self.workers.append(self.cluster.add_node(**node_args(cpus)))
        self.cluster.wait_for_nodes()


@contextmanager
def local_cluster(
    workers: int = 1, cpus_per_node: int = 1, head_cpus: int | None = None
) -> Iterator[LocalCluster]:
    """A head node and ``workers`` worker nodes, each its own raylet and object store.

    ``head_cpus`` (default ``cpus_per_node``) of 0 keeps tasks off the head, so only the worker
    nodes compute (benchmarks/scale.py counts workers that way). The caller's process is not
    connected; code under test joins through the address (as a Dagster step does with
    ``$VLIT_RAY_ADDRESS``).
    """
    from ray.cluster_utils import Cluster

    head = node_args(cpus_per_node if head_cpus is None else head_cpus)
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        nodes = [cluster.add_node(**node_args(cpus_per_node)) for _ in range(workers)]
        cluster.wait_for_nodes()
        if not str(cluster.address).startswith("127.0.0.1:"):
            raise RuntimeError(f"the test cluster left the loopback address: {cluster.address}")
        yield LocalCluster(cluster, nodes)
    finally:
        cluster.shutdown()
