"""One framed fabric connection over a socket: the only place that does fabric I/O.

Frames go out with vectored I/O (``sendmsg`` of the header and the page
buffers as they are; no per-page copy) and come in with ``recv_into`` into a
buffer the connection keeps. A frame is validated whole (header, then payload)
before :meth:`Connection.receive` returns it, so a handler never sees a frame
that fails validation. Any protocol violation closes the connection: after a
bad frame the stream cannot be resynchronised.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Sequence
from typing import NoReturn

from nova_ipmigrate.fabric import wire
from nova_ipmigrate.fabric.errors import (
    ErrorCode,
    FabricAuthError,
    FabricConnectionError,
    FabricProtocolError,
    FabricTimeoutError,
)

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: Frames with payloads up to this size are received through the read-ahead buffer.
_READ_AHEAD = 64 * 1024
#: TLS has no sendmsg: buffers are joined into writes of about this size.
_TLS_WRITE_SIZE = 256 * 1024


class TruncatedFrameError(FabricProtocolError, FabricConnectionError):
    """The stream ended inside a frame: a protocol error, and a broken connection."""


#: IP TOS of page-ins, page-outs and control requests: IPTOS_LOWDELAY (Linux maps it
#: to the interactive priority band of a NIC's or a prio qdisc's queues)
TOS_INTERACTIVE = 0x10
#: IP TOS of bulk streams (part moves): IPTOS_THROUGHPUT (the bulk band)
TOS_BULK = 0x08


def tune_socket(sock: socket.socket, buffer_bytes: int = 0, bulk: bool = False) -> None:
    """TCP_NODELAY (a frame is one send, Nagle only delays replies); optional buffers;
    the traffic class.

    ``buffer_bytes`` 0 keeps the kernel's autotuning, which an explicit
    SO_SNDBUF/SO_RCVBUF turns off (and ``net.core.[rw]mem_max`` caps). ``bulk``
    marks the connection as bulk traffic: a page-in answer sent by the same host
    must not queue behind a part move's data (``TOS_INTERACTIVE`` otherwise).
    """
    tos = TOS_BULK if bulk else TOS_INTERACTIVE
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
    elif sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)


class Connection:
    """A framed connection. Not thread-safe: one user at a time (callers hold a lock)."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        #: Host name (or address until authenticated) of the other end, for messages.
        self.peer = peer
        self.authenticated = False
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._vectored = not isinstance(sock, ssl.SSLSocket)
        # Read-ahead buffer: bytes received and not yet consumed are [_start, _end).
        self._view = memoryview(bytearray(_READ_AHEAD))
        self._start = self._end = 0
        self._large = bytearray(0)
        self._large_last = False

    def __repr__(self) -> str:
        return f"<Connection to {self.peer}{' (closed)' if self.closed else ''}>"

    def settimeout(self, timeout: float | None) -> None:
        """Bound every send and receive to ``timeout`` seconds (None: wait forever)."""
        if not self._vectored:
            self.sock.settimeout(timeout)
            return
        # A Python socket timeout polls before every syscall; kernel timeouts on a
        # blocking socket cost nothing until they expire (then EAGAIN).
        self.sock.setblocking(True)
        seconds = timeout or 0.0
        timeval = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)

    # -- sending ----------------------------------------------------------------------

    def send(self, buffers: Sequence[wire.Buffer]) -> None:
        """Send one frame (as built by ``wire``); the buffers are not copied."""
        if self.closed:
            raise FabricConnectionError(f"connection to {self.peer} is closed")
        total = sum(map(len, buffers))
        try:
            if self._vectored:
                self._sendmsg_all(buffers, total)
            else:
                self._send_joined(buffers)
        except BaseException as exc:
            # A frame cut short leaves the stream unusable, whatever the reason.
            self._fail(exc, "sending to")
        self.bytes_out += total

    def _sendmsg_all(self, buffers: Sequence[wire.Buffer], total: int) -> None:
        sent = 0
        if len(buffers) <= IOV_MAX:
            sent = self.sock.sendmsg(buffers)
            if sent == total:
                return  # the usual case: one syscall
        # More than IOV_MAX buffers, or a partial send (a send timeout expired, or
        # a socket in Python timeout mode): skip what went out, send the rest.
        pending = list(buffers)
        first = 0
        while True:
            while first < len(pending) and sent >= len(pending[first]):
                sent -= len(pending[first])
                first += 1
            if first == len(pending):
                return
            if sent:
                pending[first] = memoryview(pending[first])[sent:]
            sent = self.sock.sendmsg(pending[first:first + IOV_MAX])

    def _send_joined(self, buffers: Sequence[wire.Buffer]) -> None:
        pending: list[wire.Buffer] = []
        size = 0
        for part in buffers:
            pending.append(part)
            size += len(part)
            if size >= _TLS_WRITE_SIZE:
                self.sock.sendall(b"".join(pending))
                pending, size = [], 0
        if pending:
            self.sock.sendall(b"".join(pending))

    # -- receiving --------------------------------------------------------------------

    def receive(self, keep: bool = False) -> wire.Frame:
        """The next frame, fully validated.

        The payload is a view of a buffer reused by the next receive, unless
        ``keep``: then it is a fresh buffer the caller may hold on to.
        """
        if self.closed:
            raise FabricConnectionError(f"connection to {self.peer} is closed")
        try:
            if not self._fill(wire.HEADER_SIZE, at_boundary=True):
                raise FabricConnectionError(f"{self.peer} closed the connection")
            start = self._start
            header = wire.parse_header(self._view[start:start + wire.HEADER_SIZE],
                                       self.authenticated)
            self._start += wire.HEADER_SIZE
            length = header.length
            if length <= _READ_AHEAD:
                self._fill(length, at_boundary=False)  # may move the buffered bytes
                start = self._start
                payload = self._view[start:start + length]
                self._start += length
                if keep:
                    payload = memoryview(bytearray(payload))
            else:
                payload = self._receive_large(length, keep)
            self._large_last = length > _READ_AHEAD
            wire.check_payload(header, payload)
        except BaseException as exc:
            self._fail(exc, "receiving from")
        self.bytes_in += wire.HEADER_SIZE + length
        return wire.Frame(header, payload)

    def _receive_large(self, length: int, keep: bool) -> memoryview:
        """A payload too big for the read-ahead buffer: received into its own buffer."""
        if keep:
            buffer = bytearray(length)
        else:
            if len(self._large) < length:
                # A new buffer, not a resize: the old one may still be exported.
                self._large = bytearray(length)
            buffer = self._large
        payload = memoryview(buffer)[:length]
        buffered = self._end - self._start
        payload[:buffered] = self._view[self._start:self._end]
        self._start = self._end = 0
        got = buffered
        while got < length:
            n = self.sock.recv_into(payload[got:])
            if not n:
                raise TruncatedFrameError(
                    f"{self.peer} closed the connection after {got} of {length} payload bytes")
            got += n
        return payload

    def _fill(self, need: int, at_boundary: bool) -> bool:
        """Have ``need`` bytes buffered from ``_start``, reading as much as is there.

        One recv usually brings a whole small frame (a page-in request or its
        reply), header and payload, where reading exactly would take two.
        False if the stream ended cleanly at a frame boundary.
        """
        if self._end - self._start >= need:
            return True
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start + need > _READ_AHEAD:
            # Move the partial frame to the front (a copy: the slices overlap).
            rest = bytes(self._view[self._start:self._end])
            self._view[:len(rest)] = rest
            self._start, self._end = 0, len(rest)
        while self._end - self._start < need:
            # After a large frame the next is likely large too (a bulk stream): read
            # just its header, so that its payload is not copied out of this buffer.
            limit = self._start + need if self._large_last else _READ_AHEAD
            n = self.sock.recv_into(self._view[self._end:limit])
            if not n:
                if at_boundary and self._end == self._start:
                    return False
                raise TruncatedFrameError(
                    f"{self.peer} closed the connection inside a frame")
            self._end += n
        return True

    # -- closing ----------------------------------------------------------------------

    def _notify_protocol_error(self, reason: str) -> None:
        """Tell the peer why we hang up, if that can be done without blocking."""
        if not self._vectored:
            return  # TLS sockets take no send flags; the peer just sees the close
        notice = b"".join(wire.encode_error(0, wire.NO_VM, ErrorCode.PROTOCOL, reason))
        try:
            self.sock.send(notice, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket; safe from any thread, wakes a thread blocked on it."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _fail(self, exc: BaseException, doing: str) -> NoReturn:
        """Close, and raise ``exc`` as the fabric error it means."""
        if isinstance(exc, FabricProtocolError) and not isinstance(exc, TruncatedFrameError):
            self._notify_protocol_error(str(exc))
        self.close()
        if isinstance(exc, ssl.SSLError) and not self.authenticated:
            raise FabricAuthError(f"TLS with {self.peer} failed: {exc}") from exc
        if isinstance(exc, (TimeoutError, BlockingIOError)):
            raise FabricTimeoutError(f"timed out {doing} {self.peer}") from exc
        if isinstance(exc, OSError):
            raise FabricConnectionError(f"error {doing} {self.peer}: {exc}") from exc
        raise exc
