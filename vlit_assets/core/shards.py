"""Running one pure function over the shards of a source, and recording what ran where.

A stage that has heavy per-row work cuts its rows into shards and hands a ``ShardMap`` one
function and the list of shards. ``InlineMap`` runs them here, one after another; the Ray
implementation (``vlit_assets.distributed.ray_map``) runs them as tasks on a cluster. Both call
the same core function on the same shards, so the results are the same code's results. Each
shard run is recorded as a ``ShardRun`` (which node, how many attempts, how long), and
``runs_metadata`` turns those into the figures a Dagster step shows.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from vlit_assets.core.metadata import Metadata

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ShardRun:
    """One shard's run: the step it belongs to, its size, where it ran and how often it started."""

    step: str  # e.g. "raw/images", "generated/templates"
    shard: int
    items: int
    node: str
    attempts: int
    seconds: float


class ShardMap(Protocol):
    """Runs ``fn`` over every shard and returns the results in shard order."""

    kind: str  # "inline" or "ray"
    runs: list[ShardRun]

    def slots(self) -> int:
        """How many shards can run at once (decides how finely a stage cuts its rows)."""
        ...

    def map(
        self,
        fn: Callable[[T], R],
        shards: Sequence[T],
        *,
        step: str,
        sizes: Sequence[int] | None = None,
        gpus: float = 0.0,
    ) -> list[R]:
        """``[fn(s) for s in shards]``; ``gpus`` asks for that share of a GPU per shard where
        the cluster has GPUs (CPU otherwise); ``sizes`` (items per shard) only labels the runs.
        """
        ...


@dataclass
class InlineMap:
    """Every shard in this process, in order: the reference the distributed runs must equal."""

    kind: str = "inline"
    runs: list[ShardRun] = field(default_factory=list)
    parallel: int = 1  # reported slots, so tests can cut as many shards as a cluster would

    def slots(self) -> int:
        return self.parallel

    def map(
        self,
        fn: Callable[[T], R],
        shards: Sequence[T],
        *,
        step: str,
        sizes: Sequence[int] | None = None,
        gpus: float = 0.0,
    ) -> list[R]:
        out: list[R] = []
        for i, shard in enumerate(shards):
            start = time.perf_counter()
            out.append(fn(shard))
            items = sizes[i] if sizes is not None else 1
            self.runs.append(ShardRun(step, i, items, "local", 1, time.perf_counter() - start))
        return out


def cut(n_items: int, parts: int) -> list[tuple[int, int]]:
    """``(start, length)`` of at most ``parts`` contiguous, near-equal, non-empty slices."""
    if n_items <= 0:
        return []
    parts = max(1, min(parts, n_items))
    size = -(-n_items // parts)
    return [(start, min(size, n_items - start)) for start in range(0, n_items, size)]


def shard_count(mapper: ShardMap, n_items: int, *, min_items: int, per_slot: int = 2) -> int:
    """Shards for ``n_items``: ``per_slot`` per parallel slot, none smaller than ``min_items``.

    More shards than slots keep every slot busy when shards take unequal time, and make a lost
    node's share small; the floor keeps the per-task overhead (a few ms) below the work.
    """
    if n_items <= 0:
        return 0
    return max(1, min(mapper.slots() * per_slot, n_items // max(1, min_items) or 1))


def runs_metadata(runs: Sequence[ShardRun]) -> Metadata:
    """Figures for a step's materialization: shards, nodes, retries and time per step."""
    if not runs:
        return {}
    out: Metadata = {
        "compute/shards": len(runs),
        "compute/nodes": len({r.node for r in runs}),
        "compute/retries": sum(r.attempts - 1 for r in runs),
    }
    by_step = Counter(r.step for r in runs)
    for step in sorted(by_step):
        mine = [r for r in runs if r.step == step]
        out[f"compute/{step}/shards"] = len(mine)
        out[f"compute/{step}/retries"] = sum(r.attempts - 1 for r in mine)
        out[f"compute/{step}/busy_s"] = round(sum(r.seconds for r in mine), 3)
        per_node = Counter(r.node for r in mine)
        out[f"compute/{step}/shards_per_node"] = ", ".join(
            f"{node}: {n}" for node, n in sorted(per_node.items())
        )
    return out
