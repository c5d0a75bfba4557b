"""The fabric client: this host's end of its transfers to one peer host.

Two pools of authenticated connections to the peer:

* request connections for page-ins, page-outs, drops and the requests of a
  partial migration (copy, commit, drop a VM): one round trip each,
  TCP_NODELAY, one caller per connection at a time (a page-in never waits
  behind another caller's transfer); the pool grows on demand;
* ``streams`` bulk connections for :meth:`FabricClient.bulk_put`, which
  pipelines batches over all of them.

A broken connection is replaced and the request sent again, a bounded number
of times: every request is idempotent (the service applies it all or nothing),
except that a COMMIT_PAGES applied whose reply was lost fails when sent again
(its pages have left the staging key: PagesNotHeldError). Timeouts are not
retried: a peer that is too slow would only get more work.
"""

from __future__ import annotations

import collections
import itertools
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from oslo_log import log as logging

from nova_ipmigrate.fabric import auth, wire
from nova_ipmigrate.fabric.connection import Connection, tune_socket
from nova_ipmigrate.fabric.errors import (
    FabricAuthError,
    FabricConnectionError,
    FabricError,
    FabricProtocolError,
    FabricRemoteError,
    FabricTimeoutError,
    remote_error,
)

LOG = logging.getLogger(__name__)

#: bulk_put sends every page of one run of this many pages (2 MiB) over the same
#: stream, so a page listed twice arrives in order and the later copy wins.
ROUTE_RUN_PAGES = 512
_ZERO_VIEW = memoryview(wire.ZERO_PAGE)
_T = TypeVar("_T")


class _Pool:
    """Connections to the peer, each lent to one caller at a time."""

    def __init__(self, connect: Callable[[], Connection], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: list[Connection] = []
        self._lent: set[Connection] = set()
        self._opening = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())  # not the default RLock: hot path

    def acquire(self, block: bool = True) -> Connection | None:
        """An idle connection, or a new one if the pool is not full; None if not ``block``."""
        with self._cond:
            while True:
                if self._closed:
                    raise FabricConnectionError("fabric client is closed")
                if self._idle:
                    conn = self._idle.pop()  # LIFO: the warmest connection
                    self._lent.add(conn)
                    return conn
                if len(self._lent) + self._opening < self._size:
                    self._opening += 1
                    break
                if not block:
                    return None
                self._cond.wait()
        try:
            conn = self._connect()
        finally:
            with self._cond:
                self._opening -= 1
                self._cond.notify()
        with self._cond:
            self._lent.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        with self._cond:
            self._lent.discard(conn)
            if conn.closed:
                # Its peer is likely gone for the idle ones too: replace them lazily.
                stale, self._idle = self._idle, []
            elif self._closed:
                stale = [conn]
            else:
                stale = []
                self._idle.append(conn)
            self._cond.notify()
        for old in stale:
            old.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            conns = self._idle + list(self._lent)
            self._idle = []
            self._cond.notify_all()
        for conn in conns:
            conn.close()


class FabricClient:
    """Authenticated page transfers from ``host_name`` to the peer ``peer_name``.

    Thread-safe. Connects (and authenticates) once when created, so a wrong key
    or an unreachable peer shows at once as FabricAuthError/FabricConnectionError.
    """

    def __init__(self, host_name: str, addr: str, port: int, key: auth.SharedKey,
                 peer_name: str, tls: auth.TlsConfig | None = None, streams: int = 1, *,
                 batch_pages: int = 256, connect_timeout: float = 5.0,
                 request_timeout: float = 10.0, retries: int = 2,
                 request_connections: int = 8, window: int = 4,
                 buffer_bytes: int = 0) -> None:
        if host_name == peer_name:
            raise ValueError(f"a host does not talk to itself over the fabric: {host_name!r}")
        if streams < 1 or request_connections < 1 or window < 1 or retries < 0:
            raise ValueError("streams, request_connections and window must be >= 1, "
                             "retries >= 0")
        self.host_name = host_name
        self.addr = addr
        self.port = port
        self.peer_name = peer_name
        self.streams = streams
        self.batch_pages = _check_batch(batch_pages)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retries = retries
        self.window = window
        self.buffer_bytes = buffer_bytes
        self._key = key
        self._tls_context = tls.client_context() if tls else None
        self._ids = itertools.count(1)  # next() on a count is atomic under the GIL
        self._requests = _Pool(lambda: self._connect(bulk=False), request_connections)
        self._bulk = _Pool(lambda: self._connect(bulk=True), streams)
        conn = self._requests.acquire()
        assert conn is not None
        self._requests.release(conn)

    def __repr__(self) -> str:
        return f"<FabricClient {self.host_name} -> {self.peer_name} ({self.addr}:{self.port})>"

    def __enter__(self) -> FabricClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._requests.close()
        self._bulk.close()

    # -- connections ------------------------------------------------------------------

    def _connect(self, bulk: bool) -> Connection:
        where = f"{self.peer_name} ({self.addr}:{self.port})"
        try:
            sock = socket.create_connection((self.addr, self.port), self.connect_timeout)
        except OSError as exc:
            raise FabricConnectionError(f"cannot connect to {where}: {exc}") from exc
        try:
            tune_socket(sock, self.buffer_bytes if bulk else 0, bulk=bulk)
            if self._tls_context is not None:
                sock = self._tls_context.wrap_socket(sock, server_hostname=self.peer_name)
            conn = Connection(sock, where)
            auth.client_handshake(conn, self.host_name, self.peer_name, self._key)
        except ssl.SSLError as exc:
            sock.close()
            raise FabricAuthError(f"TLS with {where} failed: {exc}") from exc
        except OSError as exc:
            sock.close()
            raise FabricConnectionError(f"cannot connect to {where}: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        conn.settimeout(self.request_timeout)
        LOG.debug("fabric: connected to %s%s", where, " (bulk)" if bulk else "")
        return conn

    def _retrying(self, what: str, attempt: Callable[[], _T]) -> _T:
        """Run ``attempt``, again on a broken connection, at most ``retries`` more times."""
        for tries in itertools.count():
            try:
                return attempt()
            except FabricConnectionError as exc:
                if isinstance(exc, FabricTimeoutError) or tries >= self.retries:
                    raise
                LOG.info("fabric: %s to %s: %s; retrying", what, self.peer_name, exc)
                # The first retry is at once (a pooled connection found dead), later
                # ones give a restarting peer a moment.
                time.sleep(0.05 * tries)
        raise AssertionError("unreachable")

    def _request(self, what: str, frame: list[wire.Buffer], request_id: int, vm: uuid.UUID,
                 expect: wire.MessageType, keep: bool = False,
                 timeout: float | None = None) -> wire.Frame:
        """One request and its reply; ``timeout`` replaces ``request_timeout`` for it."""
        def attempt() -> wire.Frame:
            conn = self._requests.acquire()
            assert conn is not None
            try:
                if timeout is not None:
                    conn.settimeout(timeout)
                conn.send(frame)
                return _check_reply(conn, conn.receive(keep=keep), request_id, vm, expect)
            finally:
                if timeout is not None and not conn.closed:
                    conn.settimeout(self.request_timeout)  # back to the pool's timeout
                self._requests.release(conn)

        return self._retrying(what, attempt)

    # -- requests ---------------------------------------------------------------------

    def next_request_id(self) -> int:
        return next(self._ids)

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[memoryview]:
        """Page-in: the content of ``pages``, one round trip per MAX_PAGES.

        The views are read-only and stay valid (each reply has its own buffer).
        Raises PagesNotHeldError (naming them) if the peer lacks any of the pages.
        """
        result: list[memoryview] = []
        for start in range(0, len(pages), wire.MAX_PAGES):
            chunk = list(pages[start:start + wire.MAX_PAGES])
            request_id = self.next_request_id()
            reply = self._request(
                "page-in", wire.encode_page_list(wire.MessageType.GET_PAGES, request_id, vm,
                                                 chunk),
                request_id, vm, wire.MessageType.PAGES, keep=True)
            got, data = wire.decode_pages(reply.header, reply.payload)
            if got != chunk:
                raise FabricProtocolError(f"{self.peer_name} answered with other pages")
            result.extend(_ZERO_VIEW if page is wire.ZERO_PAGE else memoryview(page).toreadonly()
                          for page in data)
        return result

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int],
                  data: Sequence[wire.Buffer]) -> None:
        """Page-out: the peer stores all of ``pages`` or none (e.g. StoreFullError)."""
        if len(pages) > wire.MAX_PAGES:
            raise ValueError(f"put_pages takes at most {wire.MAX_PAGES} pages (one "
                             f"all-or-nothing request); use bulk_put for more")
        request_id = self.next_request_id()
        frame = wire.encode_pages(wire.MessageType.PUT_PAGES, request_id, vm, pages, data)
        reply = self._request("page-out", frame, request_id, vm, wire.MessageType.ACK)
        _check_ack(reply, len(pages), self.peer_name)

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        """The peer forgets ``pages`` (idempotent; pages it does not hold are ignored)."""
        for start in range(0, len(pages), wire.MAX_PAGES):
            chunk = pages[start:start + wire.MAX_PAGES]
            request_id = self.next_request_id()
            frame = wire.encode_page_list(wire.MessageType.DROP_PAGES, request_id, vm, chunk)
            reply = self._request("drop", frame, request_id, vm, wire.MessageType.ACK)
            _check_ack(reply, len(chunk), self.peer_name)

    def copy_pages(self, vm: uuid.UUID, key: uuid.UUID, dest_name: str, dest_address: str,
                   dest_port: int, pages: Sequence[int],
                   timeout: float | None = None) -> tuple[int, list[int]]:
        """The peer sends the ones it holds of ``vm``'s ``pages`` to another host.

        They are stored on ``dest_name`` (at ``dest_address``:``dest_port``) under
        the staging ``key``, not ``vm``; :meth:`commit_pages` on that host makes
        them the VM's. One request per MAX_PAGES, each waiting up to ``timeout``
        (default ``request_timeout``) while the peer streams its pages on.
        Returns the pages copied and the listed pages the peer does not hold. A
        failure at the destination is raised as the peer reports it
        (RemoteInternalError naming the destination); pages of earlier requests,
        and some of the failed one, may be at the destination under ``key``.
        """
        copied = 0
        missing: list[int] = []
        for start in range(0, len(pages), wire.MAX_PAGES):
            chunk = list(pages[start:start + wire.MAX_PAGES])
            request = wire.CopyRequest(key, dest_name, dest_address, dest_port, chunk)
            request_id = self.next_request_id()
            frame = wire.encode_copy_pages(request_id, vm, request)
            reply = self._request("copy", frame, request_id, vm, wire.MessageType.COPIED,
                                  timeout=timeout)
            done, absent = wire.decode_copied(reply.header, reply.payload)
            if done + len(absent) != len(chunk) or not set(absent).issubset(chunk):
                raise FabricProtocolError(
                    f"{self.peer_name} copied {done} and missed {len(absent)} pages of a "
                    f"copy of {len(chunk)} pages")
            copied += done
            missing.extend(absent)
        return copied, missing

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        """The peer moves ``pages`` from the staging ``key`` to ``vm``; the pages moved.

        Each MAX_PAGES of them are moved all or nothing: PagesNotHeldError (naming
        the pages not held under ``key``) leaves that request's pages where they
        were, but those of earlier requests moved.
        """
        moved = 0
        for start in range(0, len(pages), wire.MAX_PAGES):
            chunk = pages[start:start + wire.MAX_PAGES]
            request_id = self.next_request_id()
            frame = wire.encode_commit_pages(request_id, vm, key, chunk)
            reply = self._request("commit", frame, request_id, vm, wire.MessageType.ACK)
            if reply.header.count > len(chunk):
                raise FabricProtocolError(f"{self.peer_name} committed {reply.header.count} "
                                          f"of {len(chunk)} pages")
            moved += reply.header.count
        return moved

    def drop_vm(self, vm: uuid.UUID) -> int:
        """The peer forgets every page of ``vm`` (a VM or a staging key); how many it held."""
        request_id = self.next_request_id()
        reply = self._request("drop VM", wire.encode_empty(wire.MessageType.DROP_VM,
                                                            request_id, vm),
                              request_id, vm, wire.MessageType.ACK)
        return reply.header.count

    def get_directory(self, vm: uuid.UUID, timeout: float | None = None) -> tuple[bytes, bytes]:
        """The page directory of ``vm`` as its old main host froze it (main-host move):
        (JSON header line, one code byte per page); see :mod:`~nova_ipmigrate.fabric.wire`."""
        request_id = self.next_request_id()
        reply = self._request("get directory",
                              wire.encode_empty(wire.MessageType.GET_DIRECTORY, request_id, vm),
                              request_id, vm, wire.MessageType.DIRECTORY, keep=True,
                              timeout=timeout)
        return wire.decode_directory(reply.payload)

    def ping(self) -> float:
        """Round-trip time to the peer, in seconds."""
        request_id = self.next_request_id()
        start = time.perf_counter()
        self._request("ping", wire.encode_empty(wire.MessageType.PING, request_id),
                      request_id, wire.NO_VM, wire.MessageType.PONG)
        return time.perf_counter() - start

    def bulk_put(self, vm: uuid.UUID, items: Iterable[tuple[int, wire.Buffer]],
                 batch_pages: int | None = None) -> int:
        """Push many pages over the bulk streams; returns the number of pages sent.

        Batches of ``batch_pages`` are pipelined (``window`` unacknowledged per
        stream) over up to ``streams`` connections. Each batch is applied all or
        nothing, the transfer as a whole is not: after an error some batches may
        be stored. The buffers must not change until this returns (a batch is
        sent again on a new connection if its connection breaks).
        """
        batch = _check_batch(batch_pages or self.batch_pages)
        first = self._bulk.acquire()
        assert first is not None
        conns = [first]
        try:
            while len(conns) < self.streams:
                more = self._bulk.acquire(block=False)
                if more is None:
                    break  # another bulk_put holds the rest
                conns.append(more)
        except FabricError as exc:
            LOG.warning("fabric: bulk_put to %s with %d of %d streams: %s", self.peer_name,
                        len(conns), self.streams, exc)
        abort = threading.Event()
        streams = [_BulkStream(self, self._bulk, conn, vm, abort) for conn in conns]
        threads = [threading.Thread(target=stream.run, daemon=True,
                                    name=f"fabric-bulk-{self.peer_name}-{index}")
                   for index, stream in enumerate(streams)]
        for thread in threads:
            thread.start()
        try:
            _distribute(items, streams, batch, abort)
        except BaseException:
            abort.set()  # e.g. the source failed: send nothing more
            raise
        finally:
            for stream in streams:
                stream.batches.put(None)
            for thread in threads:
                thread.join()
        for stream in streams:
            if stream.error is not None:
                raise stream.error
        return sum(stream.pages_sent for stream in streams)


def _check_batch(batch_pages: int) -> int:
    if not 1 <= batch_pages <= wire.MAX_PAGES:
        raise ValueError(f"batch_pages must be 1 to {wire.MAX_PAGES}: {batch_pages}")
    return batch_pages


def _check_reply(conn: Connection, reply: wire.Frame, request_id: int, vm: uuid.UUID,
                 expect: wire.MessageType) -> wire.Frame:
    header = reply.header
    if header.type is wire.MessageType.ERROR:
        code, pages, message = wire.decode_error(header, reply.payload)
        error = remote_error(code, message, pages)
        if not isinstance(error, FabricRemoteError) or header.request_id != request_id:
            conn.close()  # a connection-level error: the peer hangs up
        raise error
    if header.request_id != request_id or header.type is not expect or header.vm != vm:
        conn.close()
        raise FabricProtocolError(
            f"{conn.peer} answered request {request_id} ({expect.name} for VM {vm}) with "
            f"{header.type.name} to request {header.request_id} for VM {header.vm}")
    return reply


def _check_ack(reply: wire.Frame, pages: int, peer: str) -> None:
    if reply.header.count != pages:
        raise FabricProtocolError(f"{peer} acknowledged {reply.header.count} of {pages} pages")


def _distribute(items: Iterable[tuple[int, wire.Buffer]], streams: list[_BulkStream],
                batch: int, abort: threading.Event) -> None:
    """Cut ``items`` into batches, each stream getting the runs routed to it."""
    count = len(streams)
    if count == 1:
        # Nothing to route: cut batches in C (islice, zip), not page by page.
        source = iter(items)
        while (chunk := list(itertools.islice(source, batch))) and not abort.is_set():
            numbers, contents = zip(*chunk, strict=True)
            streams[0].batches.put((numbers, contents))
        return
    pages: list[list[int]] = [[] for _ in streams]
    data: list[list[wire.Buffer]] = [[] for _ in streams]
    for page, content in items:
        index = (page // ROUTE_RUN_PAGES) % count
        pages[index].append(page)
        data[index].append(content)
        if len(pages[index]) >= batch:
            if abort.is_set():
                return
            streams[index].batches.put((pages[index], data[index]))
            pages[index], data[index] = [], []
    for index, stream in enumerate(streams):
        if pages[index] and not abort.is_set():
            stream.batches.put((pages[index], data[index]))


class _BulkStream:
    """One bulk connection during a bulk_put: sends batches, ``window`` of them unacked."""

    def __init__(self, client: FabricClient, pool: _Pool, conn: Connection, vm: uuid.UUID,
                 abort: threading.Event) -> None:
        self.client = client
        self.pool = pool
        self.conn = conn
        self.vm = vm
        self.abort = abort
        # Bounded: the producer must not read the whole source ahead of the network.
        self.batches: queue.Queue[tuple[Sequence[int], Sequence[wire.Buffer]] | None] = queue.Queue(
            maxsize=2 * client.window)
        self.error: BaseException | None = None
        self.pages_sent = 0
        # Sent and not yet acknowledged: (request id, frame, pages), oldest first.
        self._unacked: collections.deque[tuple[int, list[wire.Buffer], int]] = \
            collections.deque()
        self._retries = 0

    def run(self) -> None:
        ended = False  # the producer's end marker (None) was taken
        try:
            while (item := self.batches.get()) is not None:
                if not self.abort.is_set():
                    self._send(*item)
            ended = True
            while self._unacked:
                self._ack_oldest()
        except BaseException as exc:  # handed to bulk_put's caller
            self.error = exc
            self.abort.set()
            while not ended:
                ended = self.batches.get() is None  # keep the producer from blocking
        finally:
            if self.error is not None:
                self.conn.close()  # unacked frames may be in flight: not reusable
            self.pool.release(self.conn)

    def _send(self, pages: Sequence[int], data: Sequence[wire.Buffer]) -> None:
        request_id = self.client.next_request_id()
        frame = wire.encode_pages(wire.MessageType.PUT_PAGES, request_id, self.vm, pages,
                                  data)
        self._unacked.append((request_id, frame, len(pages)))
        try:
            self.conn.send(frame)
        except FabricConnectionError as exc:
            self._reconnect(exc)  # resends this frame with the other unacked ones
        while len(self._unacked) >= self.client.window:
            self._ack_oldest()

    def _ack_oldest(self) -> None:
        request_id, _, count = self._unacked[0]
        try:
            reply = self.conn.receive()
        except FabricConnectionError as exc:
            self._reconnect(exc)
            return  # the oldest is unacked still: the caller's loop asks again
        _check_reply(self.conn, reply, request_id, self.vm, wire.MessageType.ACK)
        _check_ack(reply, count, self.client.peer_name)
        self._unacked.popleft()
        self.pages_sent += count

    def _reconnect(self, exc: FabricConnectionError) -> None:
        """Replace the broken connection and resend every unacked batch, in order."""
        while True:
            if isinstance(exc, FabricTimeoutError) or self._retries >= self.client.retries:
                raise exc
            self._retries += 1
            LOG.info("fabric: bulk stream to %s broke (%s); resending %d batches",
                     self.client.peer_name, exc, len(self._unacked))
            self.conn.close()
            self.pool.release(self.conn)
            try:
                conn = self.pool.acquire()
                assert conn is not None
                self.conn = conn
                for _, frame, _ in self._unacked:
                    self.conn.send(frame)
                return
            except FabricConnectionError as again:
                exc = again
