"""QMPClient against a fake QMP server on a unix socket."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.qemu.qmp import QMPClient, QMPConnectionError, QMPError

Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], None]


def default_handler(msg: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
    cmd = msg["execute"]
    if cmd == "qmp_capabilities":
        send({"return": {}, "id": msg["id"]})
    elif cmd == "query-status":
        # An event arrives between the command and its reply.
        send({"event": "RESUME", "data": {},
              "timestamp": {"seconds": 1700000000, "microseconds": 250000}})
        send({"return": {"status": "running", "running": True}, "id": msg["id"]})
    elif cmd == "query-cpus-fast":
        send({"return": [{"cpu-index": 0}], "id": msg["id"]})
    elif cmd == "migrate-set-capabilities":
        send({"error": {"class": "GenericError", "desc": "Capability x-ignore-shared is off"},
              "id": msg["id"]})
    elif cmd == "hang":
        pass
    elif cmd == "quit":
        send({"return": {}, "id": msg["id"]})
        raise ConnectionAbortedError
    else:
        send({"error": {"class": "CommandNotFound", "desc": f"The command {cmd} has not been "
                        "found"}, "id": msg["id"]})


class FakeQMPServer:
    def __init__(self, path: Path, handler: Handler = default_handler,
                 greet: bool = True) -> None:
        self.path = path
        self.handler = handler
        self.greet = greet
        self.received: list[dict[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, conn.makefile("rwb") as f:
            def send(obj: dict[str, Any]) -> None:
                f.write(json.dumps(obj).encode() + b"\r\n")
                f.flush()
            try:
                if self.greet:
                    send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}},
                                  "capabilities": ["oob"]}})
                for line in f:
                    msg = json.loads(line)
                    self.received.append(msg)
                    self.handler(msg, send)
            except (ConnectionAbortedError, OSError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FakeQMPServer]:
    srv = FakeQMPServer(tmp_path / "qmp.sock")
    yield srv
    srv.close()


def test_negotiation_and_commands(server: FakeQMPServer) -> None:
    with QMPClient(server.path, timeout=5).connect() as qmp:
        assert qmp.greeting["QMP"]["version"]["qemu"]["major"] == 7
        assert server.received[0]["execute"] == "qmp_capabilities"
        assert qmp.execute("query-status") == {"status": "running", "running": True}
        assert qmp.execute_raw("query-cpus-fast") == [{"cpu-index": 0}]
        with pytest.raises(QMPError, match="execute_raw"):
            qmp.execute("query-cpus-fast")
        ev = qmp.wait_event("RESUME", timeout=2)
        assert ev is not None and ev.timestamp == 1700000000.25
        assert [e.name for e in qmp.events_named("RESUME")] == ["RESUME"]
        assert qmp.wait_event("STOP", timeout=0.05) is None
    assert not qmp.connected


def test_error_reply(server: FakeQMPServer) -> None:
    with QMPClient(server.path, timeout=5).connect() as qmp:
        with pytest.raises(QMPError) as info:
            qmp.execute("migrate-set-capabilities",
                        {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        assert info.value.error_class == "GenericError"
        assert "x-ignore-shared is off" in info.value.desc
        assert info.value.command == "migrate-set-capabilities"
        assert server.received[-1]["arguments"]["capabilities"][0]["state"] is True
        # The client is still usable after an error.
        assert qmp.execute("query-status")["status"] == "running"


def test_timeout_and_close(server: FakeQMPServer) -> None:
    qmp = QMPClient(server.path, timeout=5).connect()
    with pytest.raises(QMPConnectionError, match="no reply"):
        qmp.execute("hang", timeout=0.2)
    qmp.execute("quit")  # server answers and hangs up
    assert qmp.wait_event("NEVER", timeout=2) is None  # returns once closed
    with pytest.raises(QMPConnectionError):
        qmp.execute("query-status")
    qmp.close()


def test_connect_retries_until_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    servers: list[FakeQMPServer] = []
    timer = threading.Timer(0.3, lambda: servers.append(FakeQMPServer(path)))
    timer.start()
    try:
        qmp = QMPClient(path).connect(timeout=5)
        assert qmp.execute("query-status")["running"] is True
        qmp.close()
    finally:
        timer.cancel()
        for srv in servers:
            srv.close()


def test_connect_timeout(tmp_path: Path) -> None:
    with pytest.raises(QMPConnectionError, match="cannot connect"):
        QMPClient(tmp_path / "absent.sock").connect(timeout=0.2)


def test_no_greeting(tmp_path: Path) -> None:
    srv = FakeQMPServer(tmp_path / "mute.sock", greet=False)
    try:
        with pytest.raises(QMPConnectionError, match="greeting"):
            QMPClient(srv.path).connect(timeout=0.3)
    finally:
        srv.close()


def test_socketpair_attach() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        qmp = QMPClient(Path("pair"))
        qmp.attach(ours, negotiate=False, timeout=2)
        theirs.sendall(b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}\n')
        assert qmp.wait_event("STOP", timeout=2) is not None
        qmp.close()
