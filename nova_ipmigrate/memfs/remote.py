"""Remote paging: the interface between memfs and the hosts holding paged-out pages.

memfs on a main host asks a :class:`RemotePaging` backend (the agent's, over
the fabric) to fetch pages for a page-in, to place and push paged-out pages on
sub-hosts, and to drop copies that became stale. Holders are small integers
(1..255) the backend maps to hosts; 0 means "no holder".
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Protocol


class RemoteUnavailable(Exception):
    """The holder of pages cannot serve them (down, unreachable, lost them)."""

    def __init__(self, holder: int, pages: Sequence[int], reason: str) -> None:
        super().__init__(f"holder {holder} cannot serve {len(pages)} page(s): {reason}")
        self.holder = holder
        self.pages = list(pages)


class RemotePaging(Protocol):
    def fetch(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> list[bytes]:
        """The content of ``pages`` from ``holder`` (after bounded retries).

        Raises RemoteUnavailable: the caller fails the page-in loudly; it never
        serves anything else.
        """
        ...

    def push(self, vm: uuid.UUID, pages: Sequence[int],
             data: Sequence[memoryview], exclude: Collection[int] = ()) -> int:
        """Place ``pages`` on a sub-host (placement policy), send them, return its holder.

        Holders in ``exclude`` (closed: their part is moving away) are not chosen.

        All or nothing: on any error nothing is held anywhere and it raises.
        """
        ...

    def drop(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> None:
        """Forget stale copies of ``pages`` at ``holder`` (best effort)."""
        ...

    def holder_name(self, holder: int) -> str:
        ...
