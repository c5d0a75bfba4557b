"""The agent's page service: what its fabric server serves to other hosts.

Wraps the :class:`~nova_ipmigrate.agent.substore.SubHostStore` (gets, puts,
drops and commits go straight to it) and performs the copies of a partial
migration: the pages a main host asks us to copy are sent, with a
:class:`~nova_ipmigrate.fabric.client.FabricClient` of our own, to the
destination host it names, under its staging key. Owns those clients, one per
destination, kept for the next copy until :meth:`AgentPageService.close`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from nova_ipmigrate.agent.substore import Buffer, SubHostStore
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.client import FabricClient
from nova_ipmigrate.fabric.errors import (
    FabricError,
    RemoteBadRequestError,
    RemoteInternalError,
)
from nova_ipmigrate.fabric.wire import CopyRequest

LOG = logging.getLogger(__name__)

#: A destination of copies: host name, address, port.
Destination = tuple[str, str, int]


class AgentPageService:
    """The :class:`~nova_ipmigrate.fabric.service.PageService` of host ``host_name``.

    Thread-safe: the store has its lock, the client cache its own.
    ``request_timeout`` bounds each batch a copy sends to its destination.
    """

    def __init__(self, store: SubHostStore, host_name: str, key: auth.SharedKey,
                 tls: auth.TlsConfig | None = None, streams: int = 1, *,
                 connect_timeout: float = 5.0, request_timeout: float = 10.0) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1: {streams}")
        self.store = store
        self.host_name = host_name
        self.streams = streams
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._key = key
        self._tls = tls
        self._clients: dict[Destination, FabricClient] = {}
        self._lock = threading.Lock()
        self._closed = False
        #: main-host moves away from here (``agent.mainmove``): the old main host
        #: serves its own pages of a VM as a holder, and hands its directory over
        self.export_of: Callable[[uuid.UUID], Any] = lambda vm: None
        self.directory_of: Callable[[uuid.UUID], tuple[bytes, bytes]] | None = None
        self.export_ended: Callable[[uuid.UUID], bool] = lambda vm: False

    def close(self) -> None:
        """Close the clients of every destination; copies after this are refused."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- the store's requests ---------------------------------------------------------

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[Buffer | None]:
        export = self.export_of(vm)
        if export is not None:
            return export.read(pages)
        return self.store.get_pages(vm, pages)

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[Buffer]) -> None:
        self.store.put_pages(vm, pages, data)

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        export = self.export_of(vm)
        if export is not None:
            export.drop(pages)
        self.store.drop_pages(vm, pages)

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        return self.store.commit_pages(vm, key, pages)

    def drop_vm(self, vm: uuid.UUID) -> int:
        export = self.export_of(vm)
        held = 0
        if export is not None:
            # The new main host has every page (committed moves only; an uncommitted
            # export stays: the source may still resume).
            held = export.held if self.export_ended(vm) else 0
        return self.store.drop_vm(vm) + held

    def directory(self, vm: uuid.UUID) -> tuple[bytes, bytes]:
        if self.directory_of is None:
            raise RemoteBadRequestError(f"no main-host move of VM {vm} from {self.host_name}")
        return self.directory_of(vm)

    # -- copies -----------------------------------------------------------------------

    def copy_pages(self, vm: uuid.UUID, request: CopyRequest) -> tuple[int, list[int]]:
        """Send the held ones of ``vm``'s ``request.pages`` to the destination, under its key.

        The pages are read (copied) first, then sent without the store's lock, so
        a page dropped meanwhile is still sent. Nothing held: no connection made.
        """
        if request.name == self.host_name:
            raise RemoteBadRequestError(f"cannot copy pages to this host ({self.host_name})")
        export = self.export_of(vm)
        if export is not None:
            got = export.read(request.pages)
            found = [p for p, d in zip(request.pages, got, strict=True) if d is not None]
            data = [d for d in got if d is not None]
        else:
            found, data = self.store.held_pages(vm, request.pages)
        present = set(found)
        missing = [page for page in request.pages if page not in present]
        if not found:
            return 0, missing
        where = (request.name, request.address, request.port)
        client = None
        try:
            client = self._client(where)
            sent = client.bulk_put(request.key, zip(found, data, strict=True))
        except FabricError as exc:
            if client is not None:
                self._forget(where, client)  # maybe broken: the next copy reconnects
            LOG.warning("fabric: copy of %d pages of VM %s to %s (%s:%d) failed: %s",
                        len(found), vm, *where, exc)
            raise RemoteInternalError(
                f"copy to {request.name} ({request.address}:{request.port}) failed: "
                f"{type(exc).__name__}: {exc}") from exc
        LOG.debug("fabric: copied %d pages of VM %s to %s as %s", sent, vm, request.name,
                  request.key)
        return sent, missing

    def _client(self, where: Destination) -> FabricClient:
        with self._lock:
            if self._closed:
                raise RemoteInternalError(f"{self.host_name} is shutting down")
            client = self._clients.get(where)
        if client is not None:
            return client
        # Connected outside the lock: an unreachable host must not hold up copies to others.
        name, address, port = where
        client = FabricClient(self.host_name, address, port, self._key, name, tls=self._tls,
                              streams=self.streams, connect_timeout=self.connect_timeout,
                              request_timeout=self.request_timeout)
        with self._lock:
            closed = self._closed
            cached = client if closed else self._clients.setdefault(where, client)
        if closed or cached is not client:
            client.close()  # we are closing, or another copy connected first
        if closed:
            raise RemoteInternalError(f"{self.host_name} is shutting down")
        return cached

    def _forget(self, where: Destination, client: FabricClient) -> None:
        # A copy to the same host running on it now fails too: it likely would anyway.
        with self._lock:
            if self._clients.get(where) is client:
                del self._clients[where]
        client.close()
