"""Remote paging between agents: a main host pages a RAM file out to two sub-hosts.

Three ``ipmigrate-agent`` daemons on loopback (the namespace lab comes with the
lab tests): the main host's memfs holds a RAM file under a 25% resident limit,
paged-out pages go to the sub-hosts over the authenticated fabric and come
back on page-in. A host process checks every page it reads. A sub-host with
another key never receives a page; a killed sub-host makes page-ins of its
pages fail loudly, never return other data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_ipmigrate.fabric import auth
from nova_ipmigrate.lab.memfsd import AgentDaemon
from tests.integration.conftest import start_worker

pytestmark = pytest.mark.integration
MIB = 2**20
RAM = "vm/pc.ram"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def key(workdir: Path) -> Path:
    path = workdir / "fabric.key"
    auth.generate_key_file(path)
    return path


@pytest.fixture
def agents(workdir: Path, key: Path) -> Iterator[dict[str, AgentDaemon]]:
    started: dict[str, AgentDaemon] = {}
    try:
        for name in ("main", "sub1", "sub2"):
            d = AgentDaemon(workdir / name, name, key, _free_port(),
                            memfs={"reader_threads": 3}, agent={"fetch_timeout": 3})
            d.start()
            started[name] = d
        yield started
    finally:
        for d in started.values():
            d.stop()


def _worker(path: Path, size: int, seconds: float) -> subprocess.Popen[str]:
    return start_worker(path, size, seconds)


def _split(main: AgentDaemon, subs: list[AgentDaemon], size: int) -> uuid.UUID:
    vm = uuid.uuid4()
    main.call("create", path=RAM, size=size, resident_limit=size // 4)
    main.call("set_remote", path=RAM, vm=str(vm), sub_hosts=[s.sub_host_entry() for s in subs])
    return vm


def test_pages_go_to_sub_hosts_and_come_back_intact(agents: dict[str, AgentDaemon]) -> None:
    main, s1, s2 = agents["main"], agents["sub1"], agents["sub2"]
    size = 64 * MIB
    vm = _split(main, [s1, s2], size)
    w = _worker(main.mountpoint / RAM, size, 12)
    out, _ = w.communicate(timeout=240)

    def held() -> list[int]:
        return [s.call("agent_stats")["substore"]["vms"].get(str(vm), 0) for s in (s1, s2)]

    # stale sub-host copies are dropped asynchronously: let the pusher finish
    deadline = time.monotonic() + 10
    while (sum(held()) != main.stats()["files"][RAM]["states"]["remote"]
           and time.monotonic() < deadline):
        time.sleep(0.2)
    f = main.stats()["files"][RAM]
    h = held()
    assert w.returncode == 0 and "mismatches 0" in out, out
    assert f["remote_page_outs"] > size // 4096 // 2, f
    assert f["remote_page_ins"] > 0 and f["lost"] == 0 and not f["broken"]
    assert all(n > 0 for n in h), f"both sub-hosts hold pages: {h}"
    # the page directory and the sub-hosts agree on how many pages are remote
    assert sum(h) == f["states"]["remote"]
    main_fabric = main.call("agent_stats")["fabric"]
    assert main_fabric["auth_failures"] == 0


def test_a_sub_host_with_another_key_gets_no_page(workdir: Path, key: Path,
                                                   agents: dict[str, AgentDaemon]) -> None:
    other_key = workdir / "other.key"
    auth.generate_key_file(other_key)
    rogue = AgentDaemon(workdir / "rogue", "rogue", other_key, _free_port())
    rogue.start()
    try:
        main = agents["main"]
        size = 16 * MIB
        _split(main, [rogue], size)
        w = _worker(main.mountpoint / RAM, size, 4)
        out, _ = w.communicate(timeout=120)
        f = main.stats()["files"][RAM]
        rs = rogue.call("agent_stats")
        assert w.returncode == 0 and "mismatches 0" in out, out
        assert f["remote_page_outs"] == 0 and rs["substore"]["used_pages"] == 0
        assert rs["fabric"]["auth_failures"] > 0
    finally:
        rogue.stop()


def test_killed_sub_host_fails_page_ins_loudly_never_wrong_data(
        agents: dict[str, AgentDaemon]) -> None:
    main, s1, s2 = agents["main"], agents["sub1"], agents["sub2"]
    size = 32 * MIB
    _split(main, [s1, s2], size)
    w = _worker(main.mountpoint / RAM, size, 60)
    try:
        deadline = time.monotonic() + 60
        while main.stats()["files"][RAM]["remote_page_outs"] < 2000:
            assert time.monotonic() < deadline and w.poll() is None
            time.sleep(0.5)
        os.kill(s2.pid, signal.SIGKILL)
        out, _ = w.communicate(timeout=120)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    f = main.stats()["files"][RAM]
    assert "MISMATCH" not in out, "a page-in returned other data"
    assert w.returncode != 0, "the guest stand-in must fail (SIGBUS), not go on"
    assert f["broken"] and f["lost_remote_pages"], f
