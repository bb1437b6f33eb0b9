"""A two-node Ray cluster on 127.0.0.1 shared by the distributed tests of a session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vlit_assets.testing.ray_cluster import LocalCluster, local_cluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    """Head + one worker node, one CPU each. Tests that kill a node start their own cluster."""
    with local_cluster(workers=1) as cluster:
        yield cluster
