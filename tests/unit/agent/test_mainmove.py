"""The agent's main-host moves (``agent.mainmove``) without libvirt: requests, the
incoming RAM file, the exported one. The whole move runs in the lab tests."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.agent import mainmove
from nova_ipmigrate.agent.placement import load as load_placement
from nova_ipmigrate.agent.remote import FabricRemotePaging, SubHost
from nova_ipmigrate.fabric.errors import RemoteBadRequestError, RemoteInternalError
from nova_ipmigrate.memfs.control import ControlError
from nova_ipmigrate.memfs.pages import HERE, PageState
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.ramfile import DirectoryGate
from nova_ipmigrate.memfs.server import MemFS, MemfsConfig
from nova_ipmigrate.migration.operations import OperationError, Operations
from nova_ipmigrate.migration.transfer import Endpoint, LocalStaging
from tests.unit.fabric.helpers import KEY

VM = uuid.UUID("6a1f8a52-3c3c-4b53-9c3b-000000000002")
SOURCE = {"name": "h1", "address": "10.0.0.1", "port": 47800}
SIZE = 64 * PAGE_SIZE


def _moves(tmp_path: Path, held: int = 0) -> mainmove.MainMoves:
    fs = MemFS(MemfsConfig(mountpoint=tmp_path / "mnt"))
    ops = Operations("h4", Endpoint("h4", "10.0.0.4", 47800),
                     LocalStaging(lambda k, p: {}, lambda k, p: None, lambda k: 0))
    return mainmove.MainMoves("h4", Endpoint("h4", "10.0.0.4", 47800), fs, ops, KEY,
                              mainmove.LibvirtConfig(directory_timeout=1.0),
                              held_here=lambda vm: held)


def test_ram_file_path_is_libvirts() -> None:
    assert mainmove.ram_file_path(3, "oracle") == "libvirt/qemu/3-oracle/pc.ram"
    assert mainmove.ram_file_path(12, "x" * 30) == f"libvirt/qemu/12-{'x' * 20}/pc.ram"


@pytest.mark.parametrize(("req", "match"), [
    ({"vm": "nope", "size": SIZE, "source": SOURCE}, "instance UUID"),
    ({"vm": str(VM), "size": 1000, "source": SOURCE}, "multiple of 4096"),
    ({"vm": str(VM), "size": SIZE, "resident_limit": -1, "source": SOURCE}, "non-negative"),
    ({"vm": str(VM), "size": SIZE, "source": {"name": "h1"}}, "bad 'source'"),
    ({"vm": str(VM), "size": SIZE, "source": {**SOURCE, "name": "h4"}}, "cannot be its"),
])
def test_prepare_refuses_bad_requests(tmp_path: Path, req: dict[str, Any], match: str) -> None:
    moves = _moves(tmp_path)
    with pytest.raises(ControlError, match=match):
        moves.prepare(req)
    assert moves.incoming == {}


def test_prepare_refuses_a_host_holding_a_part(tmp_path: Path) -> None:
    moves = _moves(tmp_path, held=12)
    with pytest.raises(ControlError, match="holds 12 pages") as info:
        moves.prepare({"vm": str(VM), "size": SIZE, "source": SOURCE})
    assert info.value.errno == errno.EBUSY and moves.incoming == {}


def test_start_hook_creates_the_incoming_ram_file(tmp_path: Path) -> None:
    moves = _moves(tmp_path)
    other = uuid.uuid4()
    assert moves.domain_start({"vm": str(other), "name": "x", "id": 1}) == {
        "ok": True, "incoming": False, "path": "libvirt/qemu/1-x/pc.ram"}
    moves.prepare({"vm": str(VM), "size": SIZE, "resident_limit": 16 * PAGE_SIZE,
                   "source": SOURCE})
    res = moves.domain_start({"vm": str(VM), "name": "oracle", "id": 2,
                              "qmp": "/run/ipmigrate/v.qmp"})
    assert res == {"ok": True, "incoming": True, "path": "libvirt/qemu/2-oracle/pc.ram"}
    ram = moves.memfs.find(res["path"])
    assert ram.vm == VM and ram.quiet and isinstance(ram.incoming, DirectoryGate)
    assert ram.size == SIZE and ram.resident_limit_pages == 16
    assert isinstance(ram.remote, FabricRemotePaging) and ram.remote.holder_name(1) == "h1"
    with pytest.raises(ControlError, match="already has an incoming") as info:
        moves.domain_start({"vm": str(VM), "name": "oracle", "id": 3})
    assert info.value.errno == errno.EEXIST
    # a second prepare while one is under way
    with pytest.raises(ControlError, match="already has a RAM file"):
        moves.prepare({"vm": str(VM), "size": SIZE, "source": SOURCE})
    assert moves.abort_incoming({"vm": str(VM)}) == {"ok": True, "removed": True}
    assert moves.memfs.ram_files() == [] and moves.incoming == {}


def test_start_hook_without_an_id_finds_the_newest_directory(tmp_path: Path) -> None:
    moves = _moves(tmp_path)
    for d in ("3-oracle", "9-oracle", "11-other"):
        moves.memfs.create_ram_file(f"libvirt/qemu/{d}/x", PAGE_SIZE)
    assert moves.domain_start({"vm": str(VM), "name": "oracle"})["path"] == \
        "libvirt/qemu/9-oracle/pc.ram"


def test_commit_needs_a_move(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no main-host move") as info:
        _moves(tmp_path).commit({"vm": str(VM)})
    assert info.value.errno == errno.ENOENT
    with pytest.raises(ControlError, match="'then'"):
        _moves(tmp_path).commit({"vm": str(VM), "then": "later"})


def test_started_hook_ignores_other_domains(tmp_path: Path) -> None:
    assert _moves(tmp_path).domain_started({"vm": str(VM)}) == {"ok": True,
                                                                "incoming": False}


def _split_ram(tmp_path: Path) -> tuple[mainmove.MainMoves, Any]:
    """A split RAM file on h4 (as an old main host): pages 0-3 resident, 8 at h2."""
    moves = _moves(tmp_path)
    ram = moves.memfs.create_ram_file("libvirt/qemu/1-oracle/pc.ram", SIZE)
    ram.set_remote(VM, FabricRemotePaging("h4", [SubHost("h2", "10.0.0.2", 47800)], KEY,
                                          load_placement("round_robin")))
    t = ram.table
    buf = memoryview(bytearray(PAGE_SIZE))
    for p in range(4):
        t.read(p, 1, buf)
    with t.lock:
        t.state[8], t.holder[8] = int(PageState.REMOTE), 1
        t.counts[0] -= 1
        t.counts[int(PageState.REMOTE)] += 1
    return moves, ram


def test_export_hands_the_directory_over_once_the_source_stopped(tmp_path: Path) -> None:
    moves, ram = _split_ram(tmp_path)
    # the export reads through the mount: here a plain file stands in for it
    f = tmp_path / "mnt" / "libvirt/qemu/1-oracle/pc.ram"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"".join(bytes([p + 1]) * PAGE_SIZE for p in range(64)))
    export = mainmove.Export(VM, "libvirt/qemu/1-oracle/pc.ram", ram, tmp_path / "mnt")
    moves.exports[VM] = export
    ram.set_resident_limit(16)
    with pytest.raises(RemoteInternalError, match="not paused"):
        moves.directory(VM)                        # the source still runs
    assert export.read([0]) == [None]
    threading.Timer(0.1, export.stopped.set).start()
    head, codes = moves.directory(VM)
    meta = json.loads(head)
    assert meta["npages"] == 64 and meta["holders"] == {
        "1": {"name": "h2", "address": "10.0.0.2", "port": 47800}}
    assert codes[:4] == bytes([HERE] * 4) and codes[8] == 1 and codes.count(0) == 59
    # serving reads paged-out pages back: no limit (no throttled reads) meanwhile
    assert ram.resident_limit_pages == 0 and export.saved_limit == 16
    got = export.read([1, 8, 3, 9])
    assert got == [bytes([2]) * PAGE_SIZE, None, bytes([4]) * PAGE_SIZE, None]
    export.drop([1])
    assert export.read([1]) == [None] and export.held == 3
    with pytest.raises(RemoteBadRequestError, match="no main-host move"):
        moves.directory(uuid.uuid4())
    # not committed: the end of a pull does not release it (the source may resume)
    assert not moves.end_export(VM)
    export.committed = True
    assert moves.end_export(VM) and moves.memfs.ram_files() == [] and export.ended


def test_migrate_refusals(tmp_path: Path) -> None:
    moves, _ram = _split_ram(tmp_path)
    path = "libvirt/qemu/1-oracle/pc.ram"
    dest = {"name": "h3", "address": "10.0.0.3", "port": 47800}
    with pytest.raises(OperationError, match="no QMP monitor"):
        moves.migrate({"path": path, "dest": dest})
    with pytest.raises(OperationError, match="differ from the main host"):
        moves.migrate({"path": path, "dest": {**dest, "name": "h4"}})
    with pytest.raises(OperationError, match="h2 holds a part"):
        moves.migrate({"path": path, "dest": {**dest, "name": "h2"}})
    moves.memfs.create_ram_file("plain.ram", SIZE)
    with pytest.raises(OperationError, match="not a split VM"):
        moves.migrate({"path": "plain.ram", "dest": dest})
    assert moves.operations.all() == []


def test_a_rolled_back_export_restores_the_limit(tmp_path: Path) -> None:
    moves, ram = _split_ram(tmp_path)
    f = tmp_path / "mnt" / "libvirt/qemu/1-oracle/pc.ram"
    f.parent.mkdir(parents=True)
    f.write_bytes(bytes(SIZE))
    ram.set_resident_limit(16)
    export = mainmove.Export(VM, "libvirt/qemu/1-oracle/pc.ram", ram, tmp_path / "mnt")
    export.stopped.set()
    export.directory(1.0)
    assert ram.resident_limit_pages == 0
    export.close(rolled_back=True)
    assert ram.resident_limit_pages == 16 and export.read([0]) == [None]


# -- the source side when Nova's libvirt driver runs the migration -------------------------

DEST = {"name": "h3", "address": "10.0.0.3", "port": 47800}
PATH = "libvirt/qemu/1-oracle/pc.ram"


class FakeMonitor:
    """The source QEMU's extra QMP monitor: answers commands (or refuses
    migrate-set-capabilities), sends STOP/RESUME, goes away like an exiting QEMU."""

    def __init__(self, path: Path, refuse: bool = False) -> None:
        self.path = path
        self.refuse = refuse
        self.commands: list[dict[str, Any]] = []
        self.connections = 0
        self._conn: socket.socket | None = None
        self._wlock = threading.Lock()
        self._ready = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conn = conn
            self._send({"QMP": {"version": {}, "capabilities": []}})
            self._ready.set()
            try:
                with conn.makefile("rb") as f:
                    for line in f:
                        msg = json.loads(line)
                        self.commands.append(msg)
                        if self.refuse and msg["execute"] == "migrate-set-capabilities":
                            self._send({"error": {"class": "GenericError", "desc": "no"},
                                        "id": msg["id"]})
                        else:
                            self._send({"return": {}, "id": msg["id"]})
            except OSError:
                pass

    def _send(self, obj: dict[str, Any]) -> None:
        assert self._conn is not None
        with self._wlock:
            self._conn.sendall(json.dumps(obj).encode() + b"\r\n")

    def event(self, name: str) -> None:
        assert self._ready.wait(5)
        self._send({"event": name, "data": {},
                    "timestamp": {"seconds": 1700000000, "microseconds": 500000}})

    def gone(self) -> None:
        assert self._conn is not None
        self._conn.shutdown(socket.SHUT_RDWR)
        self._conn.close()

    def close(self) -> None:
        self.sock.close()


def _until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[tuple[mainmove.MainMoves, Any, FakeMonitor]]:
    """A split VM on h4 whose domain the hook reported, with its QMP monitor."""
    moves, ram = _split_ram(tmp_path)
    f = tmp_path / "mnt" / PATH
    f.parent.mkdir(parents=True)
    f.write_bytes(bytes(SIZE))   # what the export reads through the mount
    ram.set_resident_limit(16)
    monitor = FakeMonitor(tmp_path / "qmp.sock")
    moves.domain_start({"vm": str(VM), "name": "oracle", "id": 1,
                        "qmp": str(tmp_path / "qmp.sock")})
    yield moves, ram, monitor
    for src in list(moves.sources.values()):
        moves._end_source(src, False)
    monitor.close()


def _op(moves: mainmove.MainMoves) -> dict[str, Any]:
    (op,) = moves.operations.all()
    return op


def test_prepare_and_commit_the_source(source: Any) -> None:
    moves, ram, monitor = source
    reply = moves.prepare_source({"vm": str(VM), "dest": DEST})
    assert reply == {"ok": True, "vm": str(VM), "path": PATH, "domain": "oracle"}
    assert ram.frozen and isinstance(moves.exports[VM], mainmove.Export)
    assert [c["execute"] for c in monitor.commands] == ["qmp_capabilities",
                                                        "migrate-set-capabilities"]
    assert monitor.commands[1]["arguments"] == {"capabilities": mainmove.IGNORE_SHARED}
    op = _op(moves)
    assert (op["kind"], op["state"], op["dest"], op["details"]["phase"]) == (
        "main_host_migration", "running", "h3", "prepared")
    assert moves.stats()["sources"] == {str(VM): {"path": PATH, "dest": "h3",
                                                  "stopped": False}}
    # the RAM file takes no other operation meanwhile
    with pytest.raises(OperationError, match="busy with operation") as info:
        moves.migrate({"path": PATH, "dest": DEST, "qmp": "/x"})
    assert info.value.errno == errno.EBUSY
    # no switchover yet: cannot be committed, nothing changes
    with pytest.raises(OperationError, match="never paused") as info:
        moves.finish_source({"vm": str(VM), "ok": True})
    assert info.value.errno == errno.EBUSY and VM in moves.sources and ram.frozen
    # the switchover: the destination takes the directory
    monitor.event("STOP")
    assert moves.exports[VM].stopped.wait(5)
    head, _codes = moves.directory(VM)
    assert json.loads(head)["stopped_at"] == 1700000000.5
    done = moves.finish_source({"vm": str(VM), "ok": True})
    export = moves.exports[VM]
    assert done == {"ok": True, "vm": str(VM), "path": PATH, "committed": True,
                    "stopped_at": 1700000000.5, "directory_at": export.directory_at}
    assert export.committed and ram.frozen and moves.sources == {}
    op = _op(moves)
    assert op["state"] == "done" and op["details"]["phase"] == "switched"
    # a repeated commit gets the same answer; a rollback is refused
    assert moves.finish_source({"vm": str(VM), "ok": True}) == done
    with pytest.raises(OperationError, match="committed") as info:
        moves.finish_source({"vm": str(VM), "ok": False})
    assert info.value.errno == errno.EBUSY
    with pytest.raises(OperationError, match="moved away|done") as info:
        moves.prepare_source({"vm": str(VM), "dest": DEST})
    assert info.value.errno == errno.EBUSY
    # the new main host's pull ends it (DROP_VM), as after virsh
    assert moves.end_export(VM) and moves.memfs.ram_files() == []


def test_prepare_source_is_idempotent_for_the_same_destination(source: Any) -> None:
    moves, _ram, monitor = source
    first = moves.prepare_source({"vm": str(VM), "dest": DEST})
    assert moves.prepare_source({"path": PATH, "dest": DEST}) == first
    assert moves.prepare_source({"vm": str(VM), "dest": DEST}) == first
    assert monitor.connections == 1 and len(monitor.commands) == 2
    assert len(moves.operations.all()) == 1
    with pytest.raises(OperationError, match="to h3 is prepared: not one to h5") as info:
        moves.prepare_source({"vm": str(VM), "dest": {**DEST, "name": "h5"}})
    assert info.value.errno == errno.EBUSY and moves.sources[VM].dest.name == "h3"


def test_a_failed_migration_rolls_the_source_back(source: Any) -> None:
    moves, ram, monitor = source
    moves.prepare_source({"vm": str(VM), "dest": DEST})
    monitor.event("STOP")
    export = moves.exports[VM]
    assert export.stopped.wait(5)
    moves.directory(VM)                                 # the destination loads...
    assert ram.resident_limit_pages == 0
    monitor.event("RESUME")                              # ...fails; libvirt resumes
    _until(lambda: not export.stopped.is_set())
    with pytest.raises(OperationError, match="was resumed"):
        moves.finish_source({"vm": str(VM), "ok": True})
    reply = moves.finish_source({"vm": str(VM), "ok": False})
    assert reply == {"ok": True, "vm": str(VM), "path": PATH, "rolled_back": True}
    assert moves.exports == {} and moves.sources == {} and export.ended
    assert not ram.frozen and ram.resident_limit_pages == 16
    assert _op(moves)["state"] == "failed" and _op(moves)["details"]["phase"] == \
        "rolled back"
    # again: nothing to roll back; a commit finds nothing
    assert moves.finish_source({"vm": str(VM), "ok": False}) == {
        "ok": True, "vm": str(VM), "rolled_back": False}
    with pytest.raises(OperationError, match="no main-host move") as info:
        moves.finish_source({"vm": str(VM), "ok": True})
    assert info.value.errno == errno.ENOENT
    # the RAM file is free again: another move can be prepared
    assert moves.prepare_source({"vm": str(VM), "dest": DEST})["ok"]


def test_no_rollback_once_the_move_happened(source: Any) -> None:
    moves, ram, monitor = source
    moves.prepare_source({"vm": str(VM), "dest": DEST})
    monitor.event("STOP")
    assert moves.exports[VM].stopped.wait(5)
    moves.directory(VM)
    monitor.gone()                                       # the source QEMU exits
    qmp = moves.sources[VM].qmp
    _until(lambda: qmp is not None and not qmp.connected)
    with pytest.raises(OperationError, match="happened: h3 took the page directory") as info:
        moves.finish_source({"vm": str(VM), "ok": False})
    assert info.value.errno == errno.EBUSY
    assert VM in moves.sources and ram.frozen and VM in moves.exports
    assert moves.finish_source({"vm": str(VM), "ok": True})["committed"]


def test_a_source_qemu_gone_before_the_directory_may_roll_back(source: Any) -> None:
    moves, ram, monitor = source
    moves.prepare_source({"vm": str(VM), "dest": DEST})
    monitor.gone()
    assert moves.finish_source({"vm": str(VM), "ok": False})["rolled_back"]
    assert not ram.frozen and moves.exports == {}


def test_prepare_source_refusals(source: Any, tmp_path: Path) -> None:
    moves, ram, _monitor = source
    with pytest.raises(ControlError, match="'vm' or 'path'"):
        moves.prepare_source({"dest": DEST})
    with pytest.raises(ControlError, match="instance UUID"):
        moves.prepare_source({"vm": "nope", "dest": DEST})
    with pytest.raises(OperationError, match="no domain of") as info:
        moves.prepare_source({"vm": str(uuid.uuid4()), "dest": DEST})
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OperationError, match="not of"):
        moves.prepare_source({"vm": str(uuid.uuid4()), "path": PATH, "dest": DEST})
    with pytest.raises(ControlError, match="bad 'dest'"):
        moves.prepare_source({"vm": str(VM), "dest": {"name": "h3"}})
    with pytest.raises(OperationError, match="differ from the main host"):
        moves.prepare_source({"vm": str(VM), "dest": {**DEST, "name": "h4"}})
    with pytest.raises(OperationError, match="h2 holds a part") as info:
        moves.prepare_source({"vm": str(VM), "dest": {**DEST, "name": "h2"}})
    assert info.value.errno == errno.EBUSY
    moves.memfs.create_ram_file("plain.ram", SIZE)
    with pytest.raises(OperationError, match="not a split VM"):
        moves.prepare_source({"path": "plain.ram", "dest": DEST})
    moves.domain_start({"vm": str(VM), "name": "oracle", "id": 1})     # no monitor
    with pytest.raises(OperationError, match="no QMP monitor") as info:
        moves.prepare_source({"vm": str(VM), "dest": DEST})
    assert info.value.errno == errno.EOPNOTSUPP
    assert moves.operations.all() == [] and not ram.frozen and moves.exports == {}
    with pytest.raises(ControlError, match="'ok' must be"):
        moves.finish_source({"vm": str(VM), "ok": "yes"})


def test_prepare_source_rolls_back_when_qemu_refuses(source: Any, tmp_path: Path) -> None:
    moves, ram, monitor = source
    monitor.refuse = True
    with pytest.raises(OperationError, match="cannot set x-ignore-shared") as info:
        moves.prepare_source({"vm": str(VM), "dest": DEST})
    assert info.value.errno == errno.EIO
    assert not ram.frozen and moves.exports == {} and moves.sources == {}
    assert _op(moves)["state"] == "failed"
    monitor.refuse = False
    assert moves.prepare_source({"vm": str(VM), "dest": DEST})["ok"]   # not busy


def test_finish_source_leaves_a_virsh_move_alone(source: Any) -> None:
    moves, ram, _monitor = source
    moves.exports[VM] = mainmove.Export(VM, PATH, ram, Path("/nonexistent"))
    for ok in (True, False):
        with pytest.raises(OperationError, match="runs its own libvirt migration"):
            moves.finish_source({"vm": str(VM), "ok": ok})
    assert VM in moves.exports
