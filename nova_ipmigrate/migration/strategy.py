"""How the part moves of an operation transfer pages: pluggable strategies.

A strategy is loaded by name from the stevedore namespace
``nova_ipmigrate.transfer_strategy`` (a request's ``strategy``, or
``[migration] default_strategy`` when it names none); the built-ins are
plugins like any other. A strategy does not move pages itself: it declares
how :class:`~nova_ipmigrate.migration.operations.Operations` drives the move.

* ``direct``: each part goes straight from its holder to the destination
  (``transfer.PartTransfer``), all parts in parallel, ``regions_in_flight``
  region copies at once. Otherwise the naive baselines run: partial migration
  pages the whole VM into the main host and splits it again; reintegration
  gathers every part, holder after holder, through the main host's page-in
  path, ``gather_batch`` pages per request.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from stevedore import extension

NAMESPACE = "nova_ipmigrate.transfer_strategy"
#: the strategy of a request that names none, unless configured otherwise
DEFAULT = "ipmigrate"


@runtime_checkable
class TransferStrategy(Protocol):
    #: the entry-point name (reported in an operation's progress)
    name: str
    #: parts move straight between hosts (True) or through the main host (False)
    direct: bool
    #: pages per page-in request when gathering through the main host
    gather_batch: int

    def regions_in_flight(self, configured: int) -> int:
        """Region copies in flight for one direct part move (``configured``: the
        ``[migration] regions_in_flight`` option)."""
        ...


class IPmigrate:
    """Direct, parallel part moves: ``[migration] regions_in_flight`` as configured."""

    name = "ipmigrate"
    direct = True
    gather_batch = 4096

    def regions_in_flight(self, configured: int) -> int:
        return configured


class Naive:
    """The baselines IPmigrate is measured against (comparison only)."""

    name = "naive"
    direct = False
    #: one fabric request at most
    gather_batch = 4096

    def regions_in_flight(self, configured: int) -> int:
        return configured


class UnknownStrategy(ValueError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"unknown strategy {name!r} (one of {', '.join(available)})")
        self.name = name
        self.available = available


def manager() -> extension.ExtensionManager:
    """Every installed strategy, instantiated (a plugin that fails to load is logged
    and left out)."""
    return extension.ExtensionManager(NAMESPACE, invoke_on_load=True)


def load(name: str, extensions: extension.ExtensionManager | None = None) -> TransferStrategy:
    """The strategy registered as ``name``; :class:`UnknownStrategy` lists the others."""
    mgr = extensions if extensions is not None else manager()
    if name not in mgr.names():
        raise UnknownStrategy(name, sorted(mgr.names()))
    obj = mgr[name].obj
    if not isinstance(obj, TransferStrategy):
        raise TypeError(f"strategy plugin {name!r} ({type(obj).__name__}) does not implement "
                        f"TransferStrategy")
    return obj
