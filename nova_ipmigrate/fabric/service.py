"""What a fabric server serves: the :class:`PageService` contract, and an in-memory one.

The agent implements :class:`PageService` over its page store; the server
(``server.py``) calls it for every authenticated request, from one thread per
connection, so implementations must be thread-safe.

A page that is asked for but not held here (``get_pages`` returns ``None`` for
it) fails the whole request with ERROR NOT_HELD naming the missing pages: a
page-in goes to the host the page directory names, so a miss is a consistency
failure that the caller must see, never a silent substitute page.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Protocol

from nova_ipmigrate.fabric.errors import StoreFullError
from nova_ipmigrate.fabric.wire import Buffer


class PageService(Protocol):
    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> Sequence[Buffer | None]:
        """The content of ``pages`` (PAGE_SIZE bytes each, None: not held here).

        The buffers are sent as they are, after this returns: they must not
        change until the reply has gone out (return copies if they might).
        """

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[Buffer]) -> None:
        """Store ``pages`` (in order: a page named twice ends with its last content).

        All or nothing: raise :class:`~nova_ipmigrate.fabric.errors.StoreFullError`
        (or another ``FabricRemoteError``) having stored none of them. ``data``
        are views of a receive buffer that is reused after this returns: copy them.
        """

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        """Forget ``pages``; pages not held are ignored (dropping is idempotent)."""


class InMemoryPageService:
    """A PageService over dicts, for tests, benchmarks and the lab's fake hosts."""

    def __init__(self, capacity_pages: int | None = None) -> None:
        self.capacity_pages = capacity_pages
        self._vms: dict[uuid.UUID, dict[int, bytes]] = {}
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def pages_of(self, vm: uuid.UUID) -> dict[int, bytes]:
        with self._lock:
            return dict(self._vms.get(vm, {}))

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[Buffer | None]:
        with self._lock:
            held = self._vms.get(vm, {})
            return [held.get(page) for page in pages]

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[Buffer]) -> None:
        if len(pages) != len(data):
            raise ValueError(f"{len(pages)} page numbers but {len(data)} pages of data")
        copies = [bytes(page) for page in data]
        with self._lock:
            held = self._vms.setdefault(vm, {})
            new = len(set(pages).difference(held))
            if self.capacity_pages is not None and self._held + new > self.capacity_pages:
                raise StoreFullError(
                    f"store full: {new} new pages, {self.capacity_pages - self._held} free")
            held.update(zip(pages, copies, strict=True))
            self._held += new

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        with self._lock:
            held = self._vms.get(vm, {})
            for page in pages:
                if held.pop(page, None) is not None:
                    self._held -= 1
