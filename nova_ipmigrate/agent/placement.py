"""Placement of paged-out pages across a VM's sub-hosts: pluggable policies.

A policy is loaded by name from the stevedore namespace
``nova_ipmigrate.placement`` (``[agent] placement_policy``); the defaults are
plugins like any other. A policy sees the candidate holders with the pages
each already holds for the VM and picks one for the next batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

from stevedore import driver

NAMESPACE = "nova_ipmigrate.placement"


@dataclass
class Candidate:
    holder: int          # 1-based index of the sub-host for this VM
    name: str
    held_pages: int      # pages of this VM it holds (as far as the main host knows)
    healthy: bool = True


class PlacementPolicy(Protocol):
    def choose(self, candidates: list[Candidate], npages: int) -> int:
        """The holder for a batch of ``npages`` pages (one of the candidates)."""
        ...


class RoundRobin:
    """Batches go to the healthy sub-hosts in turn: spreads load and bandwidth."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: list[Candidate], npages: int) -> int:
        healthy = [c for c in candidates if c.healthy] or candidates
        return healthy[next(self._turn) % len(healthy)].holder


class LeastLoaded:
    """The sub-host holding the fewest pages of this VM: evens out the parts."""

    def choose(self, candidates: list[Candidate], npages: int) -> int:
        healthy = [c for c in candidates if c.healthy] or candidates
        return min(healthy, key=lambda c: (c.held_pages, c.holder)).holder


def load(name: str) -> PlacementPolicy:
    mgr: driver.DriverManager = driver.DriverManager(NAMESPACE, name, invoke_on_load=True)
    policy: PlacementPolicy = mgr.driver  # type: ignore[assignment]
    return policy
