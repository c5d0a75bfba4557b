"""The memfs control socket: local management requests as JSON lines.

One request per line, one reply per line. Operations: ``stats``,
``create`` (path, size, resident_limit), ``set_limit`` (path,
resident_limit), ``shutdown``. The socket is created mode 0600: guest memory
is secret, and only root on this host manages it. Errors come back as
``{"error": "...", "errno": N}`` and change nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova_ipmigrate.memfs.server import MemFS
from nova_ipmigrate.memfs.tree import FsError

LOG = logging.getLogger(__name__)
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The daemon refused a request (or could not be reached)."""

    def __init__(self, message: str, errno_: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = errno_


def _int_arg(req: dict[str, Any], name: str, minimum: int = 0) -> int:
    v = req.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ControlError(f"'{name}' must be an integer >= {minimum}")
    return v


def _str_arg(req: dict[str, Any], name: str) -> str:
    v = req.get(name)
    parts = v.strip("/").split("/") if isinstance(v, str) else []
    if (not isinstance(v, str) or not v.strip("/") or "\0" in v
            or any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts)):
        raise ControlError(f"'{name}' must be a relative path inside memfs")
    return v


class ControlServer:
    """Serves the control socket of one :class:`MemFS` on a thread."""

    def __init__(self, fs: MemFS, path: Path, on_shutdown: Callable[[], None],
                 extra: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
                 ) -> None:
        self.fs = fs
        #: more operations (the agent's); a handler raises ControlError on bad input
        self.extra = extra or {}
        self.path = path
        self.on_shutdown = on_shutdown
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(8)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="memfs-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            # shutdown() wakes the accept() of the serving thread; close() alone does not
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                if len(line) > MAX_REQUEST:
                    reply: dict[str, Any] = {"error": "request too large", "errno": errno.E2BIG}
                else:
                    reply = self.dispatch(line)
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()
                if reply.get("shutdown"):
                    self.on_shutdown()
                    return

    def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ControlError("a request is a JSON object")
            op = req.get("op")
            if op == "stats":
                return {"ok": True, "stats": self.fs.stats()}
            if op == "create":
                self.fs.create_ram_file(_str_arg(req, "path"), _int_arg(req, "size", 1),
                                        _int_arg(req, "resident_limit"))
                return {"ok": True}
            if op == "set_limit":
                self.fs.set_resident_limit(_str_arg(req, "path"),
                                           _int_arg(req, "resident_limit"))
                return {"ok": True}
            if op == "shutdown":
                return {"ok": True, "shutdown": True}
            if isinstance(op, str) and op in self.extra:
                return self.extra[op](req)
            raise ControlError(f"unknown operation {op!r}")
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
            return {"error": f"malformed request: {exc}", "errno": errno.EINVAL}
        except ControlError as exc:
            return {"error": str(exc), "errno": exc.errno}
        except FsError as exc:
            return {"error": str(exc), "errno": exc.errno}


def call(sock_path: Path, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one request to a memfs daemon; raises ControlError on refusal."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(sock_path))
        except OSError as exc:
            raise ControlError(f"memfs daemon not reachable at {sock_path}: {exc}",
                               exc.errno or errno.ECONNREFUSED) from exc
        try:
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            with s.makefile("rb") as f:
                line = f.readline()
        except OSError as exc:
            raise ControlError(f"memfs daemon at {sock_path} failed: {exc}",
                               exc.errno or errno.ECONNRESET) from exc
    if not line:
        raise ControlError("memfs daemon closed the connection", errno.ECONNRESET)
    reply: dict[str, Any] = json.loads(line)
    if "error" in reply:
        raise ControlError(reply["error"], reply.get("errno", errno.EINVAL))
    return reply
