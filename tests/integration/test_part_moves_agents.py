"""Part moves between real agents on loopback, with a host process as the guest.

Four ``ipmigrate-agent`` daemons (main, sub1, sub2, spare): the main host's
memfs holds a RAM file under a 25% resident limit, split over sub1 and sub2.
A host process maps it and verifies and rewrites pages all the time (every
page it reads is checked) while parts move: a sub-host's part to a new host
and to a host that already holds a part, an abort mid-transfer, a killed
destination mid-transfer, and reintegration onto the main host. Each must
end with the process seeing no mismatch and the directory and the sub-hosts
agreeing on who holds what. The QEMU/oracle version of this runs in the lab
(``test_part_moves_lab.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.fabric import auth
from nova_ipmigrate.lab.memfsd import AgentDaemon
from tests.integration.conftest import start_worker
from tests.integration.test_agent_remote_paging import _free_port

pytestmark = pytest.mark.integration
MIB = 2**20
RAM = "vm/pc.ram"
SIZE = 48 * MIB


@pytest.fixture
def agents(workdir: Path) -> Iterator[dict[str, AgentDaemon]]:
    key = workdir / "fabric.key"
    auth.generate_key_file(key)
    started: dict[str, AgentDaemon] = {}
    try:
        for name in ("main", "sub1", "sub2", "spare"):
            d = AgentDaemon(workdir / name, name, key, _free_port(),
                            memfs={"reader_threads": 3, "page_store_mb": 256},
                            agent={"fetch_timeout": 3})
            d.start()
            started[name] = d
        yield started
    finally:
        for d in started.values():
            d.stop()


def _split(main: AgentDaemon, subs: list[AgentDaemon]) -> uuid.UUID:
    vm = uuid.uuid4()
    main.call("create", path=RAM, size=SIZE, resident_limit=SIZE // 4)
    main.call("set_remote", path=RAM, vm=str(vm), sub_hosts=[s.sub_host_entry() for s in subs])
    return vm


def _worker(path: Path, seconds: float) -> subprocess.Popen[str]:
    return start_worker(path, SIZE, seconds)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _op(main: AgentDaemon, op: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        cur = main.call("op_status", id=op["id"], wait=1)
        if cur["state"] != "running":
            return cur
        assert time.monotonic() < deadline, f"operation did not end: {cur}"


def _held(d: AgentDaemon, vm: uuid.UUID) -> int:
    return int(d.call("agent_stats")["substore"]["vms"].get(str(vm), 0))


def _by_host(main: AgentDaemon) -> dict[str, int]:
    vms = main.call("parts")["vms"]
    assert len(vms) == 1, vms
    return dict(vms[0]["pages_by_host"])


def _agree(main: AgentDaemon, subs: list[AgentDaemon], vm: uuid.UUID) -> None:
    """The directory and the sub-hosts agree (stale copies are dropped asynchronously)."""
    def ok() -> bool:
        dir_ = _by_host(main)
        return all(_held(s, vm) == dir_.get(s.host, 0) for s in subs)
    _wait(ok, 15, "the sub-hosts to hold exactly what the directory says")


def _dest(d: AgentDaemon) -> dict[str, Any]:
    return d.sub_host_entry()


def test_partial_migration_and_reintegration_while_the_vm_writes(
        agents: dict[str, AgentDaemon]) -> None:
    main, s1, s2, spare = (agents[n] for n in ("main", "sub1", "sub2", "spare"))
    vm = _split(main, [s1, s2])
    w = _worker(main.mountpoint / RAM, 40)
    try:
        _wait(lambda: _held(s1, vm) > 2000 and _held(s2, vm) > 2000, 60, "pages on sub-hosts")
        # 1. sub1's part to a new host, while the VM pages in and out.
        before = _held(s1, vm)
        op = _op(main, main.call("partial_migrate", path=RAM, source="sub1",
                                 dest=_dest(spare)))
        assert op["state"] == "done", op
        pr = op["progress"]
        assert pr["switched"] > 0.5 * before, pr
        assert _held(s1, vm) == 0, "the source is empty for this VM"
        assert "sub1" not in main.call("parts")["vms"][0]["holders"]
        _agree(main, [s1, s2, spare], vm)
        # 2. sub2's part to a host that already holds a part (spare).
        op = _op(main, main.call("partial_migrate", path=RAM, source="sub2",
                                 dest=_dest(spare)))
        assert op["state"] == "done", op
        assert _held(s2, vm) == 0
        _agree(main, [s1, s2, spare], vm)
        # 3. reintegration: spare's part comes home to the main host.
        op = _op(main, main.call("reintegrate", path=RAM))
        assert op["state"] == "done", op
        assert _held(spare, vm) == 0
        assert set(_by_host(main)) == {"main"}, _by_host(main)
        out, _ = w.communicate(timeout=240)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 0 and "mismatches 0" in out, out
    f = main.stats()["files"][RAM]
    assert f["lost"] == 0 and not f["broken"], f


def test_abort_and_killed_destination_leave_the_source_owner(
        agents: dict[str, AgentDaemon]) -> None:
    main, s1, s2, spare = (agents[n] for n in ("main", "sub1", "sub2", "spare"))
    vm = _split(main, [s1, s2])
    w = _worker(main.mountpoint / RAM, 30)
    try:
        _wait(lambda: _held(s1, vm) > 2000, 60, "pages on sub1")
        # Abort mid-transfer: the cap keeps the copy slow enough to catch it.
        op = main.call("partial_migrate", path=RAM, source="sub1", dest=_dest(spare),
                       max_rate_mb_s=4)
        _wait(lambda: main.call("op_status", id=op["id"])["progress"]["copied"] > 0, 30,
              "the copy to start")
        main.call("op_abort", id=op["id"])
        end = _op(main, op)
        assert end["state"] == "aborted", end
        assert _by_host(main).get("spare", 0) == 0, "nothing is owned by the destination"
        _wait(lambda: _held(spare, vm) == 0, 10, "staged copies dropped at the destination")
        assert _held(s1, vm) > 0
        # A destination killed mid-transfer: the move fails, the source keeps its part.
        op = main.call("partial_migrate", path=RAM, source="sub1", dest=_dest(spare),
                       max_rate_mb_s=4)
        _wait(lambda: main.call("op_status", id=op["id"])["progress"]["copied"] > 0, 30,
              "the copy to start")
        os.kill(spare.pid, signal.SIGKILL)
        end = _op(main, op)
        assert end["state"] == "failed" and end["fault"], end
        assert _by_host(main).get("spare", 0) == 0
        _agree(main, [s1, s2], vm)
        out, _ = w.communicate(timeout=240)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == 0 and "mismatches 0" in out, out
    f = main.stats()["files"][RAM]
    assert f["lost"] == 0 and not f["broken"], f


def test_bad_requests_change_nothing(agents: dict[str, AgentDaemon]) -> None:
    main, s1, s2, spare = (agents[n] for n in ("main", "sub1", "sub2", "spare"))
    vm = _split(main, [s1, s2])
    before = main.call("parts")
    for req, words in [
        ({"source": "spare", "dest": _dest(s2)}, "holds no part"),
        ({"source": "sub1", "dest": _dest(s1)}, "differ"),
        ({"source": "sub1", "dest": {"name": "x"}}, "dest"),
        ({"source": "sub1", "dest": _dest(spare), "strategy": "teleport"}, "strategy"),
        ({"source": "sub1", "dest": _dest(spare), "max_rate_mb_s": -1}, "max_rate"),
    ]:
        with pytest.raises(Exception, match=words):
            main.call("partial_migrate", path=RAM, **req)
    with pytest.raises(Exception, match="no RAM file"):
        main.call("partial_migrate", path="nope", source="sub1", dest=_dest(spare))
    with pytest.raises(Exception, match="no operation"):
        main.call("op_status", id="main-999")
    assert main.call("parts") == before
    assert main.call("ops")["ops"] == []
    del vm
