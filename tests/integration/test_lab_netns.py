"""Reaching into a network namespace from the root one: sockets created inside it,
and the loopback port forward the lab process uses to reach its broker."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_ipmigrate.lab import netns

pytestmark = pytest.mark.integration


@pytest.fixture
def ns() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"ipmt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _echo_server(ns: Path) -> tuple[socket.socket, threading.Thread]:
    srv = netns.socket_in(ns)
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_a_socket_lives_in_the_namespace_it_was_made_in(ns: Path) -> None:
    srv, _ = _echo_server(ns)
    port = srv.getsockname()[1]
    try:
        # not reachable from here: another namespace's loopback
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
        with netns.connect_in(ns, ("127.0.0.1", port)) as c:
            c.sendall(b"ping")
            assert c.recv(4) == b"ping"
        # the calling thread stayed where it was
        here = os.stat("/proc/thread-self/ns/net").st_ino
        assert here == os.stat("/proc/self/ns/net").st_ino != os.stat(ns).st_ino
    finally:
        srv.close()


def test_port_forward_relays_and_closes(ns: Path) -> None:
    srv, _ = _echo_server(ns)
    port = srv.getsockname()[1]
    fwd = netns.PortForward(ns, ("127.0.0.1", port))
    try:
        blob = os.urandom(1 << 20)
        with socket.create_connection(fwd.address, timeout=10) as c:
            got = bytearray()

            def read() -> None:
                while len(got) < len(blob):
                    chunk = c.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)
            t = threading.Thread(target=read)
            t.start()
            c.sendall(blob)
            t.join(30)
            assert bytes(got) == blob
        assert fwd.connections == 1
        # a target that refuses: the relayed connection is closed at once
        dead = netns.PortForward(ns, ("127.0.0.1", 1))
        with socket.create_connection(dead.address, timeout=10) as c:
            assert c.recv(1) == b""
        dead.close()
        with socket.create_connection(fwd.address, timeout=10) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
            fwd.close()
            c.settimeout(10)
            assert c.recv(1) == b""       # close() closes relayed connections too
        with pytest.raises(OSError):
            socket.create_connection(fwd.address, timeout=2)
    finally:
        fwd.close()
        srv.close()
