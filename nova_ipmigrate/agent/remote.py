"""Remote paging over the fabric: memfs's RemotePaging backend on a main host.

Maps a VM's holder numbers (1..N) to its sub-hosts, keeps one fabric client
per sub-host, places pushed pages with the placement policy, and turns a
sub-host that cannot answer into a loud, bounded failure: a page-in waits for
it up to ``fetch_timeout`` and then fails (the instance is reported broken);
it is never answered with other data.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from nova_ipmigrate.agent.placement import Candidate, PlacementPolicy
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.client import FabricClient
from nova_ipmigrate.fabric.errors import FabricError, PagesNotHeldError, StoreFullError
from nova_ipmigrate.memfs.remote import RemoteUnavailable

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubHost:
    name: str
    address: str
    port: int


class FabricRemotePaging:
    """Sub-hosts of one VM on one main host."""

    def __init__(self, host_name: str, sub_hosts: Sequence[SubHost], key: auth.SharedKey,
                 policy: PlacementPolicy, tls: auth.TlsConfig | None = None,
                 fetch_timeout: float = 30.0, streams: int = 1) -> None:
        if not sub_hosts or len(sub_hosts) > 255:
            raise ValueError("a split VM needs 1..255 sub-hosts")
        if host_name in {s.name for s in sub_hosts}:
            raise ValueError(f"the main host {host_name} cannot be its own sub-host")
        self.host_name = host_name
        self.sub_hosts = list(sub_hosts)
        self.policy = policy
        self.fetch_timeout = fetch_timeout
        self._key = key
        self._tls = tls
        self._streams = streams
        self._clients: dict[int, FabricClient] = {}
        self._lock = threading.Lock()
        self._held = [0] * (len(sub_hosts) + 1)
        self._down: set[int] = set()
        self._retired: set[int] = set()

    def holder_of_host(self, name: str) -> int:
        """The holder number of sub-host ``name`` for this VM; 0 if it is none."""
        with self._lock:
            for i, s in enumerate(self.sub_hosts):
                if s.name == name and i + 1 not in self._retired:
                    return i + 1
        return 0

    def add_sub_host(self, sub: SubHost) -> int:
        """Make ``sub`` a holder of this VM (a part moves there); returns its number.

        A host that is already a holder keeps its number.
        """
        if sub.name == self.host_name:
            raise ValueError(f"the main host {sub.name} cannot be its own sub-host")
        with self._lock:
            for i, s in enumerate(self.sub_hosts):
                if s.name == sub.name and i + 1 not in self._retired:
                    return i + 1
            if len(self.sub_hosts) >= 255:
                raise ValueError("a split VM has at most 255 holders over its lifetime")
            self.sub_hosts.append(sub)
            self._held.append(0)
            return len(self.sub_hosts)

    def retire(self, holder: int) -> None:
        """``holder`` holds nothing of this VM any more and takes no page-outs."""
        with self._lock:
            self._retired.add(holder)
            client = self._clients.pop(holder, None)
            self._held[holder] = 0
        if client is not None:
            client.close()

    def active_holders(self) -> dict[int, str]:
        with self._lock:
            return {i + 1: s.name for i, s in enumerate(self.sub_hosts)
                    if i + 1 not in self._retired}

    def client(self, holder: int) -> FabricClient:
        """The fabric client to ``holder`` (part moves talk to it too)."""
        return self._client(holder)

    def holder_name(self, holder: int) -> str:
        if 1 <= holder <= len(self.sub_hosts):
            return self.sub_hosts[holder - 1].name
        return f"<holder {holder}>"

    def _client(self, holder: int) -> FabricClient:
        with self._lock:
            client = self._clients.get(holder)
            if client is None:
                s = self.sub_hosts[holder - 1]
                client = FabricClient(self.host_name, s.address, s.port, self._key, s.name,
                                      tls=self._tls, streams=self._streams,
                                      connect_timeout=2.0, request_timeout=5.0)
                self._clients[holder] = client
            return client

    def _reset(self, holder: int) -> None:
        with self._lock:
            client = self._clients.pop(holder, None)
        if client is not None:
            client.close()

    def fetch(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> list[bytes]:
        if not 1 <= holder <= len(self.sub_hosts):
            raise RemoteUnavailable(holder, pages, "no such holder in the page directory")
        deadline = time.monotonic() + self.fetch_timeout
        delay = 0.05
        while True:
            try:
                got = self._client(holder).get_pages(vm, pages)
                self._down.discard(holder)
                return [bytes(g) for g in got]
            except PagesNotHeldError as exc:
                # The holder answers but lost them: waiting will not help.
                raise RemoteUnavailable(holder, pages, str(exc)) from exc
            except FabricError as exc:
                self._reset(holder)
                if holder not in self._down:
                    LOG.warning("page-in from %s failed (%s); retrying for up to %.0fs",
                                self.holder_name(holder), exc, self.fetch_timeout)
                    self._down.add(holder)
                if time.monotonic() + delay > deadline:
                    raise RemoteUnavailable(holder, pages, str(exc)) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def push(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[memoryview],
             exclude: Collection[int] = ()) -> int:
        tried: set[int] = set(exclude) | self._retired
        last: Exception | None = None
        while len(tried) < len(self.sub_hosts):
            cands = [Candidate(i + 1, s.name, self._held[i + 1], i + 1 not in self._down)
                     for i, s in enumerate(self.sub_hosts) if i + 1 not in tried]
            holder = self.policy.choose(cands, len(pages))
            tried.add(holder)
            try:
                self._client(holder).put_pages(vm, pages, data)
            except StoreFullError as exc:
                last = exc
                continue
            except FabricError as exc:
                self._reset(holder)
                self._down.add(holder)
                last = exc
                continue
            self._down.discard(holder)
            self._held[holder] += len(pages)
            return holder
        raise RuntimeError(f"no sub-host took {len(pages)} page(s): "
                           f"{last or 'every sub-host is closed for page-outs'}")

    def drop(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> None:
        if not 1 <= holder <= len(self.sub_hosts):
            return
        self._client(holder).drop_pages(vm, pages)
        self._held[holder] = max(0, self._held[holder] - len(pages))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
