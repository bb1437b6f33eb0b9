"""RayMap on a real two-node cluster: shard order, node spread, retries after a killed node."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from vlit_assets.core.shards import InlineMap, cut, runs_metadata, shard_count
from vlit_assets.distributed.ray_map import connect
from vlit_assets.testing.ray_cluster import local_cluster

pytestmark = pytest.mark.slow


def digest_rows(shard: tuple[int, int]) -> list[str]:
    start, length = shard
    return [hashlib.sha1(str(i).encode()).hexdigest() for i in range(start, start + length)]


def slow_digest(args: tuple[str, tuple[int, int]]) -> list[str]:
    import ray

    markers, shard = args
    Path(markers, f"{ray.get_runtime_context().get_node_id()}-{shard[0]}").touch()
    time.sleep(0.4)
    return digest_rows(shard)


def fails(shard: int) -> int:
    if shard == 2:
        raise ValueError(f"bad record in shard {shard}")
    return shard


def test_ray_results_equal_inline_and_spread_over_both_nodes(ray_cluster, tmp_path) -> None:
    shards = cut(5_000, 8)
    want = InlineMap().map(digest_rows, shards, step="t")
    with connect(ray_cluster.address) as mapper:
        # Shards that take a while (as real ones do), so the worker node gets its share.
        work = [(str(tmp_path), s) for s in shards]
        got = mapper.map(slow_digest, work, step="t", sizes=[n for _, n in shards])
    assert got == want
    assert [r.shard for r in sorted(mapper.runs, key=lambda r: r.shard)] == list(range(8))
    assert sum(r.items for r in mapper.runs) == 5_000
    meta = runs_metadata(mapper.runs)
    assert meta["compute/shards"] == 8 and meta["compute/retries"] == 0
    assert meta["compute/nodes"] == 2


def test_core_error_fails_at_once_with_its_own_type(ray_cluster) -> None:
    with connect(ray_cluster.address) as mapper, pytest.raises(ValueError, match="shard 2"):
        mapper.map(fails, [0, 1, 2, 3], step="t")


def test_shard_count_keeps_a_floor_and_fills_slots() -> None:
    assert shard_count(InlineMap(parallel=2), 10, min_items=8) == 1
    assert shard_count(InlineMap(parallel=2), 10_000, min_items=8) == 4
    assert cut(10, 4) == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert cut(0, 4) == []


def test_killed_worker_node_reruns_its_shards_with_nothing_lost_or_doubled(tmp_path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    shards = cut(4_000, 10)
    want = InlineMap().map(digest_rows, shards, step="t")
    with local_cluster(workers=1) as c:
        victim = c.workers[0].node_id
        killed: list[float] = []

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 60
            while not killed and time.monotonic() < deadline:
                if any(p.name.startswith(victim) for p in markers.iterdir()):
                    c.kill_worker(0)
                    killed.append(time.monotonic())
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        with connect(c.address) as mapper:
            got = mapper.map(slow_digest, [(str(markers), s) for s in shards], step="t")
        killer.join(timeout=5)
    assert killed, "the worker node never ran a shard, so nothing was killed"
    assert got == want
    assert len(mapper.runs) == len(shards)
    assert sum(r.attempts - 1 for r in mapper.runs) >= 1
    assert all(r.node != victim[:8] or r.attempts == 1 for r in mapper.runs)


def test_unreachable_address_fails_fast_naming_the_setting() -> None:
    import socket as _socket

    from vlit_assets.distributed.ray_map import ClusterUnreachable

    with _socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Our own error, raised before ray.init (which would retry for minutes, then raise its own).
    with pytest.raises(ClusterUnreachable, match="VLIT_RAY_ADDRESS"), connect(f"127.0.0.1:{port}"):
        pass
    with pytest.raises(ClusterUnreachable, match="host:port"), connect("not-an-address"):
        pass


def test_a_head_without_cpus_leaves_every_shard_to_the_worker_nodes() -> None:
    # benchmarks/scale.py counts workers this way: the head schedules, only workers compute.
    shards = cut(1_000, 6)
    with local_cluster(workers=2, head_cpus=0) as c:
        head = str(c.cluster.head_node.node_id)[:8]
        workers = {str(w.node_id)[:8] for w in c.workers}
        with connect(c.address) as mapper:
            assert mapper.slots() == 2
            got = mapper.map(digest_rows, shards, step="t")
    assert got == InlineMap().map(digest_rows, shards, step="t")
    nodes = {r.node for r in mapper.runs}
    assert head not in nodes
    assert nodes <= workers
