"""Where the engine meets the cloud around it.

The default backend (``local``) knows only the agents: the engine picks
destinations from the agents' free room, and nothing outside the data plane
records where a VM's memory is. The Nova backend
(``nova_ipmigrate.accounting.backend:NovaBackend``, ``[engine] backend = nova``)
asks Nova's scheduler for destinations and keeps placement's allocations equal
to where the parts are.

A backend's claims are made when an operation is requested (a refusal changes
nothing) and settled when it ends: ``settle(op, "done")`` commits them,
any other end gives them back. Both are idempotent: a restarted engine settles
again what it may have settled already.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: the key of an operation's params that holds its backend record
RECORD = "accounting"


class Backend:
    """The ``local`` backend: no scheduler, no accounting."""

    name = "local"
    #: whether the backend chooses destinations (the engine then asks it)
    schedules = False

    def claim_part(self, op_id: str, vm: str, main: str, source: str,
                   dest: str | None, holders: Sequence[str],
                   avoid: Sequence[str] = ()) -> dict[str, Any]:
        """Claim room for ``source``'s part of ``vm`` on ``dest`` (or a host the
        backend picks, none of ``avoid``); the record has the destination as
        ``dest``. Only called when ``schedules``."""
        raise NotImplementedError(f"the {self.name} backend does not schedule")

    def claim_reintegration(self, op_id: str, vm: str, main: str,
                            sources: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError(f"the {self.name} backend does not schedule")

    def claim_split(self, op_id: str, vm: str, main: str, sub_hosts: Sequence[str],
                    resident_limit: int | None) -> dict[str, Any]:
        """Claim the sub-hosts' parts of a split (``sub_hosts`` empty: the backend
        picks them); the record has ``sub_hosts`` and ``resident_limit``."""
        raise NotImplementedError(f"the {self.name} backend does not schedule")

    #: whether main-host moves go through the backend (Nova's live migration)
    #: rather than through the old main host's agent running libvirt itself
    moves_main_host = False

    def check_main_move(self, vm: str) -> None:
        """Refuse a main-host move the backend cannot account."""

    def claim_main_move(self, op_id: str, vm: str, main: str, dest: str | None,
                        holders: Sequence[str]) -> dict[str, Any]:
        """The record of a main-host move run by the backend (``dest`` chosen if
        None). Only called when ``moves_main_host``."""
        raise NotImplementedError(f"the {self.name} backend does not move main hosts")

    def start_main_move(self, op: Any) -> None:
        """Start the move (idempotent: a started one is not started again)."""
        raise NotImplementedError(f"the {self.name} backend does not move main hosts")

    def main_move_status(self, op: Any) -> tuple[str, str]:
        """("running" | "completed" | "failed" | "unknown", what the backend says)."""
        raise NotImplementedError(f"the {self.name} backend does not move main hosts")

    def settle(self, op: Any, state: str) -> None:
        """Commit (``done``) or give back (any other end) what ``op`` claimed."""

    def release(self, record: dict[str, Any] | None) -> None:
        """Give back a record's claims (its operation was never created)."""
