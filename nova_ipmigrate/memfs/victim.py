"""How the evictor picks the pages to page out: pluggable victim policies.

A policy is loaded by name from the stevedore namespace
``nova_ipmigrate.victim_policy`` (``[memfs] victim_policy``) when the daemon
starts; the built-ins are plugins like any other. Victim selection runs under
the page table's lock on every eviction, so a policy does not run code there:
it declares which of the page table's selection algorithms
(:data:`~nova_ipmigrate.memfs.pages.VICTIM_POLICIES`) it uses.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from stevedore import extension

from nova_ipmigrate.memfs.pages import VICTIM_POLICIES

NAMESPACE = "nova_ipmigrate.victim_policy"
DEFAULT = "recency"


@runtime_checkable
class VictimPolicy(Protocol):
    #: the page table's selection algorithm, one of pages.VICTIM_POLICIES
    algorithm: str


class Recency:
    """Least recently paged-in first; pages that fault back soon after a
    page-out get a second chance."""

    algorithm = "recency"


class Random:
    """Random resident pages (for comparison only)."""

    algorithm = "random"


class UnknownVictimPolicy(ValueError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"unknown [memfs] victim_policy {name!r} (installed: "
                         f"{', '.join(available) or 'none'})")
        self.name = name
        self.available = available


def manager() -> extension.ExtensionManager:
    """Every installed policy, instantiated (one that fails to load is logged and
    left out)."""
    return extension.ExtensionManager(NAMESPACE, invoke_on_load=True)


def load(name: str, extensions: extension.ExtensionManager | None = None) -> VictimPolicy:
    """The policy registered as ``name``, checked to name a known algorithm."""
    mgr = extensions if extensions is not None else manager()
    if name not in mgr.names():
        raise UnknownVictimPolicy(name, sorted(mgr.names()))
    obj: Any = mgr[name].obj
    algorithm = getattr(obj, "algorithm", None)
    if algorithm not in VICTIM_POLICIES:
        raise ValueError(f"victim policy plugin {name!r} declares algorithm {algorithm!r}, "
                         f"not one of {', '.join(VICTIM_POLICIES)}")
    policy: VictimPolicy = obj
    return policy


def algorithm(name: str, extensions: extension.ExtensionManager | None = None) -> str:
    """The page-table algorithm of the policy registered as ``name``."""
    return load(name, extensions).algorithm
