"""The Ray implementation of ``core.shards.ShardMap``: one Ray task per shard, retried on node loss.

Tasks call the same pure core functions as a local run. Retries are ours rather than Ray's
(``max_retries=0`` on the task): a task lost with its worker or node is submitted again and
counted, so a step can say how many shards ran twice; an exception raised by the core function
itself is a bug or bad data, fails the step at once and is never retried.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vlit_assets.core.shards import ShardRun

T = TypeVar("T")
R = TypeVar("R")

ADDRESS_ENV = "VLIT_RAY_ADDRESS"
MAX_ATTEMPTS = 4


def _call(fn: Callable[[Any], Any], shard: Any) -> tuple[str, float, Any]:
    import ray

    start = time.perf_counter()
    out = fn(shard)
    node = ray.get_runtime_context().get_node_id()
    return node[:8], time.perf_counter() - start, out


@dataclass
class RayMap:
    """Shards as Ray tasks on the cluster this process is connected to (see ``connect``)."""

    max_attempts: int = MAX_ATTEMPTS
    kind: str = "ray"
    address: str = ""
    runs: list[ShardRun] = field(default_factory=list)

    def slots(self) -> int:
        import ray

        return max(
            1, int(ray.available_resources().get("CPU", 0) or ray.cluster_resources().get("CPU", 1))
        )

    def gpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0.0))

    def map(
        self,
        fn: Callable[[T], R],
        shards: Sequence[T],
        *,
        step: str,
        sizes: Sequence[int] | None = None,
        gpus: float = 0.0,
    ) -> list[R]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        # SPREAD: shards go to every node rather than filling the driver's node first.
        options: dict[str, Any] = {"max_retries": 0, "num_cpus": 1, "scheduling_strategy": "SPREAD"}
        # GPU placement: ask for the share only where the cluster has GPUs; else CPU.
        if gpus > 0 and self.gpus() > 0:
            options["num_gpus"] = gpus
        task = ray.remote(_call).options(**options)
        fn_ref = ray.put(fn)  # one copy in the object store, not one per shard
        results: dict[int, R] = {}
        attempts = dict.fromkeys(range(len(shards)), 1)
        pending = {task.remote(fn_ref, shard): i for i, shard in enumerate(shards)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i = pending.pop(ref)
            try:
                node, seconds, out = ray.get(ref)
            except RayTaskError as exc:  # the core function raised: not a cluster fault
                raise exc.as_instanceof_cause() from None
            except RayError:  # worker, node or object lost: run the shard again
                if attempts[i] >= self.max_attempts:
                    raise
                attempts[i] += 1
                pending[task.remote(fn_ref, shards[i])] = i
                continue
            results[i] = out
            items = sizes[i] if sizes is not None else 1
            self.runs.append(ShardRun(step, i, items, node, attempts[i], seconds))
        return [results[i] for i in range(len(shards))]


def configured_address(address: str | None = None) -> str | None:
    """The cluster to use: the explicit setting, else ``$VLIT_RAY_ADDRESS``; None = run locally."""
    value = (address or os.environ.get(ADDRESS_ENV, "")).strip()
    return value or None


LOOPBACK = ("127.0.0.1", "localhost")


class ClusterUnreachable(ConnectionError):
    """Nothing answers at the configured Ray address."""


def check_reachable(address: str, timeout_s: float = 5.0) -> str:
    """Fail fast, naming the setting, when nothing listens at ``address``; returns its host.

    ``ray.init`` itself keeps retrying for minutes before it gives up. ``ray://`` client
    addresses and ``auto`` are left to Ray.
    """
    if address == "auto" or "://" in address:
        return ""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterUnreachable(
            f"${ADDRESS_ENV}={address!r}: expected host:port of the cluster's GCS, "
            "'auto' or ray://host:port"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterUnreachable(
            f"${ADDRESS_ENV}={address!r}: no Ray cluster answers there ({exc}); "
            "start one (`ray start --head`) or unset the variable to run locally"
        ) from exc
    return host


@contextmanager
def connect(address: str) -> Iterator[RayMap]:
    """Join the cluster at ``address`` as a driver for the block; leave it afterwards.

    An already connected process (a test that started the cluster) stays connected.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    joined = not ray.is_initialized()
    if joined:
        host = check_reachable(address)
        if host in LOOPBACK:
            # On Linux Ray swaps a loopback GCS address for the host's outward one and then
            # waits for minutes; this switch keeps a one-machine cluster on 127.0.0.1.
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield RayMap(address=address)
    finally:
        if joined:
            ray.shutdown()
