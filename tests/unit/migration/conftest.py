"""Fixtures of the part-move tests: a cluster of in-process fabric servers, and a
world (a main host with a running pusher) on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.migration.test_operations import World
from tests.unit.migration.test_transfer import Cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    yield c
    c.close()


@pytest.fixture
def world(cluster: Cluster) -> Iterator[World]:
    w = World(cluster)
    w.start_pusher()
    yield w
    w.close()
