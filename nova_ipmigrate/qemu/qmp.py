"""A small, dependency-free QMP client over a unix socket.

This module owns talking QMP to one QEMU: connecting (with retry while QEMU
starts), capabilities negotiation, synchronous commands matched by ``id``,
and collecting asynchronous events with timestamps.  A background reader
thread owns the socket's receive side, so events are never lost while no
command is pending and a command can wait with a timeout.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["QMPClient", "QMPConnectionError", "QMPError", "QMPEvent"]


class QMPError(RuntimeError):
    """A QMP command failed (``error_class``/``desc`` as QEMU sent them)."""

    def __init__(self, error_class: str, desc: str, command: str = "") -> None:
        self.error_class = error_class
        self.desc = desc
        self.command = command
        where = f"{command}: " if command else ""
        super().__init__(f"{where}{error_class}: {desc}")


class QMPConnectionError(QMPError):
    """The socket could not be connected, timed out or was closed."""

    def __init__(self, desc: str, command: str = "") -> None:
        super().__init__("ConnectionError", desc, command)


@dataclasses.dataclass(frozen=True)
class QMPEvent:
    """An asynchronous QMP event.

    ``timestamp`` is QEMU's wall-clock time of the event (seconds, from its
    ``timestamp`` member); ``received`` is our ``time.monotonic()``.
    """

    name: str
    data: dict[str, Any]
    timestamp: float
    received: float


class QMPClient:
    """QMP client for one QEMU monitor socket.

    Use :meth:`connect` (or the context manager), then :meth:`execute`.
    Safe for one user calling from several threads: sends are serialised
    and each command waits for the reply carrying its own id.
    """

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.greeting: dict[str, Any] = {}
        self.events: list[QMPEvent] = []
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[str, dict[str, Any]] = {}
        self._closed_reason: str | None = None
        self._ids = itertools.count(1)

    # ---------------------------------------------------------- lifecycle

    def connect(self, timeout: float | None = None, negotiate: bool = True) -> QMPClient:
        """Connect, retrying until ``timeout`` (QEMU may not listen yet)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        last_err: OSError | None = None
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                break
            except OSError as exc:  # ENOENT / ECONNREFUSED while QEMU starts
                sock.close()
                last_err = exc
                if time.monotonic() >= deadline:
                    raise QMPConnectionError(f"cannot connect to {self.path}: {last_err}") from exc
                time.sleep(0.05)
        self.attach(sock, negotiate=negotiate,
                    timeout=max(0.1, deadline - time.monotonic()))
        return self

    def attach(self, sock: socket.socket, negotiate: bool = True,
               timeout: float | None = None) -> None:
        """Use an already connected socket (tests use a socketpair)."""
        self._sock = sock
        self._closed_reason = None
        self._reader = threading.Thread(target=self._read_loop, name=f"qmp-{self.path.name}",
                                        daemon=True)
        self._reader.start()
        wait = self.timeout if timeout is None else timeout
        with self._cond:
            self._cond.wait_for(lambda: bool(self.greeting) or self._closed_reason is not None,
                                timeout=wait)
            greeted, reason = bool(self.greeting), self._closed_reason
        if not greeted:
            self.close()
            why = reason or f"no QMP greeting within {wait:.1f}s"
            raise QMPConnectionError(f"{self.path}: {why}")
        if negotiate:
            self.execute("qmp_capabilities")

    def close(self) -> None:
        """Close the socket; pending commands fail with QMPConnectionError."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)
        with self._cond:
            if self._closed_reason is None:
                self._closed_reason = "closed by client"
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._closed_reason is None

    def __enter__(self) -> QMPClient:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------- commands

    def execute_raw(self, command: str, arguments: dict[str, Any] | None = None,
                    timeout: float | None = None) -> Any:
        """Run a command; return its ``return`` member (any JSON value)."""
        sock = self._sock
        if sock is None or self._closed_reason is not None:
            raise QMPConnectionError(f"not connected ({self._closed_reason or 'never connected'})",
                                     command)
        cmd_id = f"ipm-{next(self._ids)}"
        msg: dict[str, Any] = {"execute": command, "id": cmd_id}
        if arguments:
            msg["arguments"] = arguments
        payload = json.dumps(msg).encode() + b"\n"
        with self._send_lock:
            try:
                sock.sendall(payload)
            except OSError as exc:
                raise QMPConnectionError(f"send failed: {exc}", command) from exc
        wait = self.timeout if timeout is None else timeout
        with self._cond:
            ok = self._cond.wait_for(
                lambda: cmd_id in self._replies or self._closed_reason is not None, timeout=wait)
            reply = self._replies.pop(cmd_id, None)
            if reply is None:
                reason = self._closed_reason if ok else f"no reply within {wait:.1f}s"
                raise QMPConnectionError(str(reason), command)
        if "error" in reply:
            err = reply["error"]
            raise QMPError(str(err.get("class", "GenericError")), str(err.get("desc", "")), command)
        return reply.get("return", {})

    def execute(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """Run a command whose ``return`` is an object (most are); return it."""
        ret = self.execute_raw(command, arguments, timeout)
        if not isinstance(ret, dict):
            raise QMPError("TypeError", f"expected an object, got {type(ret).__name__}; "
                           "use execute_raw", command)
        return ret

    # ---------------------------------------------------------- events

    def events_named(self, name: str, since: int = 0) -> list[QMPEvent]:
        """Events called ``name`` among ``self.events[since:]``."""
        with self._cond:
            return [e for e in self.events[since:] if e.name == name]

    def events_since(self, since: int) -> list[QMPEvent]:
        """Every event from index ``since`` on, in arrival order."""
        with self._cond:
            return list(self.events[since:])

    def wait_event(self, name: str, timeout: float, since: int = 0) -> QMPEvent | None:
        """Wait for event ``name`` at index >= ``since``; None on timeout."""
        def find() -> QMPEvent | None:
            return next((e for e in self.events[since:] if e.name == name), None)

        with self._cond:
            self._cond.wait_for(lambda: find() is not None or self._closed_reason is not None,
                                timeout=timeout)
            return find()

    # ---------------------------------------------------------- reader

    def _read_loop(self) -> None:
        sock = self._sock
        buf = b""
        reason = "connection closed by QEMU"
        try:
            while sock is not None:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(line)
        except OSError as exc:
            reason = f"connection error: {exc}"
        with self._cond:
            if self._closed_reason is None:
                self._closed_reason = reason
            self._cond.notify_all()

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return  # not ours to crash on; QEMU only sends JSON
        if not isinstance(msg, dict):
            return
        with self._cond:
            if "QMP" in msg:
                self.greeting = msg
            elif "event" in msg:
                ts = msg.get("timestamp") or {}
                stamp = float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6
                self.events.append(QMPEvent(str(msg["event"]), dict(msg.get("data") or {}),
                                            stamp, time.monotonic()))
            elif "id" in msg:
                self._replies[str(msg["id"])] = msg
            # Replies without id are not ours (we always send one).
            self._cond.notify_all()
