"""The fabric server: this host's end of every other host's page transfers.

It accepts connections (a thread each: page-ins block on nothing but the
store, and a slow bulk stream must not hold up a page-in on another
connection), authenticates them (``auth.py``), then serves requests in order
from a :class:`~nova_ipmigrate.fabric.service.PageService`. Frames on one
connection are applied in the order sent, which is what keeps a page sent
twice on one stream from going stale. Requests refused by the service become
ERROR replies; a COPY_PAGES (which streams pages on to a third host) is served
on its connection's thread like any request, so it holds up only that
connection. A protocol violation or a failed authentication closes the
connection and never reaches the service.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
from dataclasses import dataclass

from oslo_log import log as logging

from nova_ipmigrate.fabric import auth, wire
from nova_ipmigrate.fabric.connection import Connection, tune_socket
from nova_ipmigrate.fabric.errors import (
    ErrorCode,
    FabricAuthError,
    FabricConnectionError,
    FabricProtocolError,
    FabricRemoteError,
    PagesNotHeldError,
    RemoteBadRequestError,
)
from nova_ipmigrate.fabric.service import PageService

LOG = logging.getLogger(__name__)


@dataclass
class FabricStats:
    connections: int = 0  # accepted since start
    active_connections: int = 0
    requests: int = 0
    errors: int = 0  # ERROR replies sent
    auth_failures: int = 0
    protocol_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pages_in: int = 0  # received in PUT_PAGES
    pages_out: int = 0  # sent in PAGES, or copied to another host for COPY_PAGES


class FabricServer:
    """Serves ``handler``'s pages to authenticated peers on ``bind_addr``:``port``.

    ``port`` 0 picks a free port (see :attr:`port` after :meth:`start`).
    """

    def __init__(self, bind_addr: str, port: int, host_name: str, key: auth.SharedKey,
                 handler: PageService, tls: auth.TlsConfig | None = None, *,
                 handshake_timeout: float = 5.0, max_connections: int = 256,
                 buffer_bytes: int = 0) -> None:
        self.bind_addr = bind_addr
        self.port = port
        self.host_name = host_name
        self.handler = handler
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.buffer_bytes = buffer_bytes
        wire.encode_host_name(host_name)  # fail now, not on the first handshake
        self._key = key
        self._tls_context = tls.server_context() if tls else None
        self._stats = FabricStats()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()

    def __enter__(self) -> FabricServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        dualstack = self.bind_addr == "::" and socket.has_dualstack_ipv6()
        family = socket.AF_INET6 if ":" in self.bind_addr else socket.AF_INET
        self._listener = socket.create_server((self.bind_addr, self.port), family=family,
                                              backlog=128, dualstack_ipv6=dualstack)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"fabric-accept-{self.port}")
        self._acceptor.start()
        LOG.info("fabric server %s listening on %s port %d%s", self.host_name,
                 self.bind_addr, self.port, " (TLS)" if self._tls_context else "")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, wait for their threads."""
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            except OSError:
                pass
            self._listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            sockets = list(self._connections)
            threads = list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout)

    def stats(self) -> FabricStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    # -- connections ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                LOG.warning("fabric accept failed: %s", exc)
                self._stopping.wait(0.1)  # e.g. EMFILE: do not spin
                continue
            with self._lock:
                refuse = len(self._connections) >= self.max_connections
                if not refuse:
                    self._connections.add(sock)
                    self._stats.connections += 1
                    self._stats.active_connections += 1
            if refuse:
                LOG.warning("fabric: refusing %s: %d connections open", address,
                            self.max_connections)
                sock.close()
                continue
            thread = threading.Thread(target=self._serve, args=(sock, address), daemon=True,
                                      name=f"fabric-conn-{address[0]}:{address[1]}")
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        peer = f"{address[0]}:{address[1]}"
        conn: Connection | None = None
        try:
            tune_socket(sock, self.buffer_bytes)
            # An unauthenticated peer gets a deadline; an authenticated one may idle
            # (clients keep pooled connections open).
            sock.settimeout(self.handshake_timeout)
            conn = Connection(sock if self._tls_context is None
                              else self._wrap_tls(sock, peer), peer)
            client = auth.server_handshake(conn, self.host_name, self._key)
            conn.settimeout(None)
            LOG.debug("fabric: %s authenticated as %s", peer, client)
            while True:
                self._handle(conn, conn.receive())
        except FabricAuthError as exc:
            self._count(auth_failures=1)
            LOG.warning("fabric: authentication of %s failed: %s", peer, exc)
        except FabricProtocolError as exc:
            self._count(protocol_errors=1)
            LOG.warning("fabric: protocol error from %s, connection closed: %s",
                        conn.peer if conn else peer, exc)
        except FabricConnectionError as exc:
            if not self._stopping.is_set():
                LOG.debug("fabric: connection from %s ended: %s", peer, exc)
        except Exception:
            LOG.exception("fabric: connection from %s failed", peer)
        finally:
            if conn is not None:
                conn.close()
            else:
                sock.close()
            with self._lock:
                self._connections.discard(sock)
                self._threads.discard(threading.current_thread())
                self._stats.active_connections -= 1

    def _wrap_tls(self, sock: socket.socket, peer: str) -> ssl.SSLSocket:
        assert self._tls_context is not None
        try:
            return self._tls_context.wrap_socket(sock, server_side=True)
        except ssl.SSLError as exc:
            raise FabricAuthError(f"TLS handshake with {peer} failed: {exc}") from exc
        except OSError as exc:
            raise FabricConnectionError(f"TLS handshake with {peer}: {exc}") from exc

    # -- requests ---------------------------------------------------------------------

    def _handle(self, conn: Connection, frame: wire.Frame) -> None:
        header = frame.header
        if header.type not in wire.REPLY_TO:
            raise FabricProtocolError(f"{conn.peer} sent {header.type.name}, not a request")
        sent_before = conn.bytes_out
        pages_in = pages_out = 0
        try:
            reply, pages_in, pages_out = self._serve_request(header, frame.payload)
        except FabricRemoteError as exc:
            self._count(errors=1)
            reply = wire.encode_error(header.request_id, header.vm, exc.code, exc.message,
                                      exc.pages)
        except Exception as exc:
            # The service's contract is all-or-nothing, so the peer may retry safely.
            LOG.exception("fabric: %s from %s failed", header.type.name, conn.peer)
            self._count(errors=1)
            reply = wire.encode_error(header.request_id, header.vm, ErrorCode.INTERNAL,
                                      f"{header.type.name} failed: {type(exc).__name__}")
        # Counted before the reply goes out: a peer that has its answer sees it counted.
        with self._lock:  # every request passes here: plain increments, no kwargs
            stats = self._stats
            stats.requests += 1
            stats.bytes_in += wire.HEADER_SIZE + header.length
            stats.pages_in += pages_in
            stats.pages_out += pages_out
        conn.send(reply)
        with self._lock:
            self._stats.bytes_out += conn.bytes_out - sent_before

    def _serve_request(self, header: wire.Header,
                       payload: memoryview) -> tuple[list[wire.Buffer], int, int]:
        """The reply to a valid request, and the pages it brought in and sends out."""
        type_ = header.type
        if type_ is wire.MessageType.GET_PAGES:
            pages = wire.decode_page_list(header, payload)
            data = self.handler.get_pages(header.vm, pages)
            if len(data) != len(pages):
                raise ValueError(f"page service returned {len(data)} of {len(pages)} pages")
            missing = [page for page, content in zip(pages, data, strict=True) if content is None]
            if missing:
                raise PagesNotHeldError(
                    f"{len(missing)} of {len(pages)} pages not held here", missing)
            found = [content for content in data if content is not None]
            reply = wire.encode_pages(wire.MessageType.PAGES, header.request_id, header.vm,
                                      pages, found)
            return reply, 0, len(pages)
        if type_ is wire.MessageType.PUT_PAGES:
            pages, contents = wire.decode_pages(header, payload)
            self.handler.put_pages(header.vm, pages, contents)
            return wire.encode_empty(wire.MessageType.ACK, header.request_id, header.vm,
                                     len(pages)), len(pages), 0
        if type_ is wire.MessageType.DROP_PAGES:
            pages = wire.decode_page_list(header, payload)
            self.handler.drop_pages(header.vm, pages)
            return wire.encode_empty(wire.MessageType.ACK, header.request_id, header.vm,
                                     len(pages)), 0, 0
        if type_ is wire.MessageType.COPY_PAGES:
            request = wire.decode_copy_pages(header, payload)
            if request.key == header.vm:
                raise RemoteBadRequestError(f"staging key {request.key} is the VM itself")
            copied, missing = self.handler.copy_pages(header.vm, request)
            if copied < 0 or copied + len(missing) > len(request.pages):
                raise ValueError(f"page service copied {copied} and missed {len(missing)} "
                                 f"of {len(request.pages)} pages")
            return wire.encode_copied(header.request_id, header.vm, copied, missing), 0, copied
        if type_ is wire.MessageType.COMMIT_PAGES:
            key, pages = wire.decode_commit_pages(header, payload)
            if key == header.vm:
                raise RemoteBadRequestError(f"staging key {key} is the VM itself")
            # Moved within this host: not a transfer, not counted as pages in.
            moved = self.handler.commit_pages(header.vm, key, pages)
            return wire.encode_empty(wire.MessageType.ACK, header.request_id, header.vm,
                                     moved), 0, 0
        if type_ is wire.MessageType.DROP_VM:
            dropped = self.handler.drop_vm(header.vm)
            return wire.encode_empty(wire.MessageType.ACK, header.request_id, header.vm,
                                     dropped), 0, 0
        if type_ is wire.MessageType.GET_DIRECTORY:
            head, codes = self.handler.directory(header.vm)
            return wire.encode_directory(header.request_id, header.vm, head, codes), 0, 0
        return wire.encode_empty(wire.MessageType.PONG, header.request_id), 0, 0
