"""Tests of the memfs control socket with a fake MemFS (nothing is mounted)."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import cast
from unittest import mock

import pytest

from nova_ipmigrate.memfs import control
from nova_ipmigrate.memfs.control import ControlError, ControlServer
from nova_ipmigrate.memfs.server import MemFS
from nova_ipmigrate.memfs.tree import FsError

STATS = {"store": {"capacity_pages": 8, "used_pages": 1}, "files": {}}


@pytest.fixture
def fs() -> mock.Mock:
    m = mock.Mock(spec=MemFS)
    m.stats.return_value = STATS
    return m


@pytest.fixture
def server(fs: mock.Mock, tmp_path: Path) -> ControlServer:
    return ControlServer(fs, tmp_path / "ctl.sock", on_shutdown=mock.Mock())


def dispatch(server: ControlServer, req: object) -> dict:
    line = req if isinstance(req, bytes) else json.dumps(req).encode() + b"\n"
    reply = server.dispatch(line)
    json.dumps(reply)  # always serialisable
    return reply


def assert_refused(fs: mock.Mock, reply: dict, err: int = errno.EINVAL) -> None:
    assert set(reply) == {"error", "errno"}, reply
    assert isinstance(reply["error"], str) and reply["error"]
    assert reply["errno"] == err
    fs.create_ram_file.assert_not_called()
    fs.set_resident_limit.assert_not_called()


# -- dispatch ---------------------------------------------------------------------


def test_stats(server: ControlServer, fs: mock.Mock) -> None:
    assert dispatch(server, {"op": "stats"}) == {"ok": True, "stats": STATS}
    fs.stats.assert_called_once_with()


def test_create(server: ControlServer, fs: mock.Mock) -> None:
    reply = dispatch(server, {"op": "create", "path": "libvirt/qemu/1-vm/pc.ram",
                              "size": 2**30, "resident_limit": 2**28})
    assert reply == {"ok": True}
    fs.create_ram_file.assert_called_once_with("libvirt/qemu/1-vm/pc.ram", 2**30, 2**28)


def test_create_with_leading_slash_and_zero_limit(server: ControlServer,
                                                  fs: mock.Mock) -> None:
    assert dispatch(server, {"op": "create", "path": "/a/pc.ram", "size": 4096,
                             "resident_limit": 0}) == {"ok": True}
    fs.create_ram_file.assert_called_once_with("/a/pc.ram", 4096, 0)


def test_set_limit(server: ControlServer, fs: mock.Mock) -> None:
    assert dispatch(server, {"op": "set_limit", "path": "a/pc.ram",
                             "resident_limit": 1024}) == {"ok": True}
    fs.set_resident_limit.assert_called_once_with("a/pc.ram", 1024)


def test_shutdown(server: ControlServer, fs: mock.Mock) -> None:
    assert dispatch(server, {"op": "shutdown"}) == {"ok": True, "shutdown": True}
    # the client loop calls on_shutdown, after replying
    cast(mock.Mock, server.on_shutdown).assert_not_called()
    assert fs.mock_calls == []


def test_fs_errors_are_reported(server: ControlServer, fs: mock.Mock) -> None:
    fs.set_resident_limit.side_effect = FsError(errno.ENOENT, "no RAM file 'x' on memfs")
    reply = dispatch(server, {"op": "set_limit", "path": "x", "resident_limit": 0})
    assert reply == {"error": "no RAM file 'x' on memfs", "errno": errno.ENOENT}
    fs.create_ram_file.side_effect = FsError(errno.EEXIST)
    reply = dispatch(server, {"op": "create", "path": "x", "size": 4096, "resident_limit": 0})
    assert reply == {"error": "EEXIST", "errno": errno.EEXIST}


@pytest.mark.parametrize("line", [b"", b"\n", b"not json\n", b"{\"op\": \n", b"{'op': 1}\n"])
def test_not_json(server: ControlServer, fs: mock.Mock, line: bytes) -> None:
    reply = dispatch(server, line)
    assert_refused(fs, reply)
    assert reply["error"].startswith("malformed request")


@pytest.mark.parametrize("req", [[], ["op", "stats"], "stats", 1, None, True])
def test_json_not_an_object(server: ControlServer, fs: mock.Mock, req: object) -> None:
    assert_refused(fs, dispatch(server, req))
    fs.stats.assert_not_called()


@pytest.mark.parametrize("req", [{}, {"op": "destroy"}, {"op": None}, {"op": 1},
                                 {"op": "STATS"}, {"path": "a"}])
def test_unknown_op(server: ControlServer, fs: mock.Mock, req: object) -> None:
    reply = dispatch(server, req)
    assert_refused(fs, reply)
    assert "unknown operation" in reply["error"]
    fs.stats.assert_not_called()


GOOD = {"op": "create", "path": "a/pc.ram", "size": 4096, "resident_limit": 0}


@pytest.mark.parametrize("field", ["size", "resident_limit"])
@pytest.mark.parametrize("value", ["missing", -1, True, False, 1.5, "4096", None, [4096]])
def test_bad_integer(server: ControlServer, fs: mock.Mock, field: str, value: object) -> None:
    req = dict(GOOD)
    if value == "missing":
        del req[field]
    else:
        req[field] = value
    reply = dispatch(server, req)
    assert_refused(fs, reply)
    assert field in reply["error"]


def test_zero_size_is_refused(server: ControlServer, fs: mock.Mock) -> None:
    assert_refused(fs, dispatch(server, dict(GOOD, size=0)))


@pytest.mark.parametrize("value", ["missing", -5, True, "1"])
def test_set_limit_bad_limit(server: ControlServer, fs: mock.Mock, value: object) -> None:
    req: dict[str, object] = {"op": "set_limit", "path": "a"}
    if value != "missing":
        req["resident_limit"] = value
    assert_refused(fs, dispatch(server, req))


@pytest.mark.parametrize("path", ["missing", "", "/", "//", "..", "../x", "a/../b", "a/..",
                                  "/../etc", "a\0b", None, 7, ["a"]])
@pytest.mark.parametrize("op", ["create", "set_limit"])
def test_bad_path(server: ControlServer, fs: mock.Mock, path: object, op: str) -> None:
    req: dict[str, object] = {"op": op, "size": 4096, "resident_limit": 0}
    if path != "missing":
        req["path"] = path
    reply = dispatch(server, req)
    assert_refused(fs, reply)
    assert "path" in reply["error"]


def test_dotdot_inside_a_name_is_fine(server: ControlServer, fs: mock.Mock) -> None:
    assert dispatch(server, dict(GOOD, path="a/b..c")) == {"ok": True}


@pytest.mark.parametrize("path", ["./pc.ram", "a/./pc.ram", "a/."])
def test_dot_component_is_refused(server: ControlServer, fs: mock.Mock, path: str) -> None:
    assert_refused(fs, dispatch(server, dict(GOOD, path=path)))


@pytest.mark.parametrize("line", [b"\xff\xfe\n", b"[" * 100_000 + b"\n"])
def test_undecodable_request_is_an_error_reply(server: ControlServer, fs: mock.Mock,
                                               line: bytes) -> None:
    assert_refused(fs, server.dispatch(line))


# -- the socket ------------------------------------------------------------------


def test_end_to_end(server: ControlServer, fs: mock.Mock, tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    server.start()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert control.call(path, "stats", timeout=5) == {"ok": True, "stats": STATS}
        assert control.call(path, "create", timeout=5, path="a/pc.ram", size=8192,
                            resident_limit=0) == {"ok": True}
        fs.create_ram_file.assert_called_once_with("a/pc.ram", 8192, 0)
        with pytest.raises(ControlError) as e:
            control.call(path, "create", timeout=5, path="../x", size=8192, resident_limit=0)
        assert e.value.errno == errno.EINVAL
        fs.set_resident_limit.side_effect = FsError(errno.ENOENT, "gone")
        with pytest.raises(ControlError, match="gone") as e:
            control.call(path, "set_limit", timeout=5, path="x", resident_limit=1)
        assert e.value.errno == errno.ENOENT

        # several requests on one connection, then shutdown
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            f = s.makefile("rwb")
            f.write(b'{"op": "stats"}\nnot json\n{"op": "shutdown"}\n')
            f.flush()
            replies = [json.loads(f.readline()) for _ in range(3)]
            assert replies[0]["ok"] and replies[1]["errno"] == errno.EINVAL
            assert replies[2] == {"ok": True, "shutdown": True}
            assert f.readline() == b""  # the server closed the connection
            f.close()
        cast(mock.Mock, server.on_shutdown).assert_called_once_with()
    finally:
        server.stop()
    assert not path.exists()
    with pytest.raises(ControlError) as e:
        control.call(path, "stats", timeout=5)
    assert e.value.errno == errno.ENOENT


def test_request_too_large(server: ControlServer, fs: mock.Mock, tmp_path: Path) -> None:
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(tmp_path / "ctl.sock"))
            f = s.makefile("rwb")
            big = json.dumps({"op": "stats", "pad": "x" * control.MAX_REQUEST}).encode()
            f.write(big + b"\n" + b'{"op": "stats"}\n')
            f.flush()
            assert json.loads(f.readline()) == {"error": "request too large",
                                                "errno": errno.E2BIG}
            assert json.loads(f.readline())["ok"]
            f.close()
        assert fs.stats.call_count == 1
    finally:
        server.stop()


def test_start_replaces_a_stale_socket(server: ControlServer, tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    server.start()
    try:
        assert control.call(path, "stats", timeout=5)["ok"]
    finally:
        server.stop()


def test_start_creates_the_directory(fs: mock.Mock, tmp_path: Path) -> None:
    path = tmp_path / "run" / "memfs" / "ctl.sock"
    srv = ControlServer(fs, path, on_shutdown=lambda: None)
    srv.start()
    try:
        assert control.call(path, "stats", timeout=5)["ok"]
    finally:
        srv.stop()
    srv.stop()  # twice is fine


def test_call_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="not reachable") as e:
        control.call(tmp_path / "nope.sock", "stats", timeout=1)
    assert e.value.errno == errno.ENOENT


def test_call_connection_closed_without_reply(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    lsock.listen(1)

    def accept_and_close() -> None:
        conn, _ = lsock.accept()
        conn.recv(1024)
        conn.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        with pytest.raises(ControlError) as e:
            control.call(path, "stats", timeout=5)
        assert e.value.errno == errno.ECONNRESET
    finally:
        t.join(5)
        lsock.close()


def test_stop_ends_the_accept_thread(server: ControlServer) -> None:
    server.start()
    thread = server._thread
    assert thread is not None and thread.is_alive()
    server.stop()
    thread.join(2)
    assert not thread.is_alive()
