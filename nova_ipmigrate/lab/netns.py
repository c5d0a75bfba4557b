"""Reaching into a lab host's network from the root namespace, without creating
anything in it.

Nothing of the lab lives in the root network namespace (see
:mod:`nova_ipmigrate.lab.hosts`), yet the lab process (the demo, the tests)
talks to the control plane that runs inside a lab host. Two tools:

* :func:`socket_in` creates a socket in another network namespace: a short-lived
  thread enters the namespace (``setns`` changes only the calling thread) and
  creates it; a socket stays in the namespace it was created in, whatever thread
  uses it later.
* :class:`PortForward` listens on a loopback port of the calling namespace and
  relays every connection to an address inside a lab host (such as the lab's
  RabbitMQ), so that ordinary clients (oslo.messaging, kombu) need nothing special.
  Closed with the lab process; it never outlives it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import selectors
import socket
import threading
from pathlib import Path

LOG = logging.getLogger(__name__)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(netns: str | os.PathLike[str], family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket in the network namespace whose file is ``netns``
    (``/run/netns/<name>``)."""
    path = Path(netns)
    result: dict[str, object] = {}

    def create() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            result["sock"] = socket.socket(family, kind)
        except BaseException as exc:  # reported in the caller's thread
            result["error"] = exc

    t = threading.Thread(target=create, name="netns-socket", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    sock = result["sock"]
    assert isinstance(sock, socket.socket)
    return sock


def connect_in(netns: str | os.PathLike[str], address: tuple[str, int],
               timeout: float | None = 10.0) -> socket.socket:
    """A TCP connection to ``address`` made from inside ``netns``."""
    sock = socket_in(netns, socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class PortForward:
    """``127.0.0.1:<port>`` here relayed to ``target`` inside ``netns``.

    One relay thread for all connections (a selector); :meth:`close` closes the
    listener and every relayed connection. A connection whose target refuses is
    closed at once, as a refused connection would be.
    """

    def __init__(self, netns: str | os.PathLike[str], target: tuple[str, int],
                 listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.netns = Path(netns)
        self.target = target
        self._listener = socket.create_server(listen)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-port-forward",
                                        daemon=True)
        self._thread.start()
        #: connections relayed so far
        self.connections = 0

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            upstream = connect_in(self.netns, self.target, timeout=5.0)
        except OSError as exc:
            LOG.debug("forward to %s in %s: %s", self.target, self.netns, exc)
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peers[client] = upstream
        self._peers[upstream] = client
        self._sel.register(client, selectors.EVENT_READ, "peer")
        self._sel.register(upstream, selectors.EVENT_READ, "peer")
        self.connections += 1

    def _drop(self, s: socket.socket) -> None:
        other = self._peers.pop(s, None)
        for x in (s, other):
            if x is None:
                continue
            self._peers.pop(x, None)
            try:
                self._sel.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def _relay(self, s: socket.socket) -> None:
        other = self._peers.get(s)
        if other is None:
            return
        try:
            data = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(s)
            return
        try:
            # AMQP traffic is small; a full send buffer blocks this relay briefly
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                LOG.debug("relay: %s", exc)
            self._drop(s)

    def _run(self) -> None:
        while not self._closed.is_set():
            for key, _ in self._sel.select(1.0):
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    self._wake_r.recv(64)
                else:
                    self._relay(key.fileobj)  # type: ignore[arg-type]
        for s in list(self._peers):
            self._drop(s)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(10)
        self._wake_w.close()

    def __enter__(self) -> PortForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
