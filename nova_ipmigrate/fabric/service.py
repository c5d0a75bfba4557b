"""What a fabric server serves: the :class:`PageService` contract, and an in-memory one.

The agent implements :class:`PageService` over its page store; the server
(``server.py``) calls it for every authenticated request, from one thread per
connection, so implementations must be thread-safe.

A page that is asked for but not held here (``get_pages`` returns ``None`` for
it) fails the whole request with ERROR NOT_HELD naming the missing pages: a
page-in goes to the host the page directory names, so a miss is a consistency
failure that the caller must see, never a silent substitute page.

Partial migration moves the pages one sub-host holds for a VM to another host
without passing them through the VM's main host: the main host asks the holder
to ``copy_pages`` them to the destination under a staging key (a UUID that is
no VM), then asks the destination to ``commit_pages`` them from the key to the
VM, and ``drop_vm`` forgets what either end no longer needs.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from nova_ipmigrate.fabric.errors import (
    PagesNotHeldError,
    RemoteBadRequestError,
    StoreFullError,
)
from nova_ipmigrate.fabric.wire import Buffer, CopyRequest

#: Sends the held pages of a copy, as (page, content), to the request's destination;
#: returns the number of pages sent.
Copier = Callable[[CopyRequest, list[tuple[int, bytes]]], int]


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

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        """Move ``pages`` from the staging ``key`` to ``vm``; the number of pages moved.

        A moved page replaces any copy held for ``vm``. All or nothing: if any of
        ``pages`` is not held under ``key``, raise
        :class:`~nova_ipmigrate.fabric.errors.PagesNotHeldError` naming them,
        having moved none.
        """

    def drop_vm(self, vm: uuid.UUID) -> int:
        """Forget every page held for ``vm`` (a VM or a staging key); how many there were."""

    def copy_pages(self, vm: uuid.UUID, request: CopyRequest) -> tuple[int, list[int]]:
        """Send the held ones of ``vm``'s ``request.pages`` to ``request``'s destination.

        They are stored there under ``request.key``, not ``vm``. Returns the
        number of pages sent and the listed pages not held here. A failure to
        reach or store at the destination is raised as a ``FabricRemoteError``
        (some pages may have arrived there under the key).
        """


    def directory(self, vm: uuid.UUID) -> tuple[bytes, bytes]:
        """The page directory of ``vm``, frozen for a main-host move away from here:
        (JSON header line, one code byte per page). Raise
        :class:`~nova_ipmigrate.fabric.errors.RemoteBadRequestError` when no such move
        of ``vm`` is under way here.
        """


class InMemoryPageService:
    """A PageService over dicts, for tests, benchmarks and the lab's fake hosts.

    It copies pages only through ``copier`` (it has no fabric client of its own).
    """

    def __init__(self, capacity_pages: int | None = None, *,
                 copier: Copier | None = None) -> None:
        self.capacity_pages = capacity_pages
        self.copier = copier
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

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        if key == vm:
            raise RemoteBadRequestError(f"staging key {key} is the VM itself")
        if not pages:
            return 0
        with self._lock:
            staged = self._vms.get(key, {})
            missing = [page for page in pages if page not in staged]
            if missing:
                raise PagesNotHeldError(
                    f"{len(missing)} of {len(pages)} pages not staged here", missing)
            held = self._vms.setdefault(vm, {})
            moved = 0
            for page in dict.fromkeys(pages):
                if page in held:
                    self._held -= 1  # the staged copy replaces it
                held[page] = staged.pop(page)
                moved += 1
            if not staged:
                self._vms.pop(key, None)
            return moved

    def drop_vm(self, vm: uuid.UUID) -> int:
        with self._lock:
            dropped = len(self._vms.pop(vm, {}))
            self._held -= dropped
            return dropped

    def directory(self, vm: uuid.UUID) -> tuple[bytes, bytes]:
        raise RemoteBadRequestError(f"no main-host move of VM {vm} from here")

    def copy_pages(self, vm: uuid.UUID, request: CopyRequest) -> tuple[int, list[int]]:
        if self.copier is None:
            raise RemoteBadRequestError("copying not supported")
        with self._lock:
            held = self._vms.get(vm, {})
            items = [(page, held[page]) for page in request.pages if page in held]
            missing = [page for page in request.pages if page not in held]
        return (self.copier(request, items) if items else 0), missing
