"""memfs on a real FUSE mount, driven by host processes (no QEMU).

libvirt's directory layout, paging under a resident limit with content
checks, a full page store, memory-cgroup reclaim of unpinned pages, bad
control requests, and shutdowns that must not leave a hung mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.lab.memfsd import MemfsDaemon, force_unmount
from nova_ipmigrate.memfs.control import ControlError
from nova_ipmigrate.qemu.memcg import MemoryCgroup
from tests.integration.conftest import start_worker

pytestmark = pytest.mark.integration
MIB = 2**20


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _file(daemon: MemfsDaemon, path: str) -> dict:
    return daemon.stats()["files"][path]


def _worker(path: Path, size: int, seconds: float) -> subprocess.Popen[str]:
    return start_worker(path, size, seconds)


def test_libvirt_layout_and_namespace_operations(workdir: Path) -> None:
    with MemfsDaemon(workdir) as d:
        mp = d.mountpoint
        dom = mp / "libvirt" / "qemu" / "3-instance-0001"
        dom.mkdir(parents=True, mode=0o700)
        fd = os.open(dom / "pc.ram", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, 8 * MIB)
        os.pwrite(fd, b"x" * 4096, 4096)
        assert os.pread(fd, 4096, 4096) == b"x" * 4096
        assert os.pread(fd, 4096, 0) == bytes(4096)
        os.close(fd)
        st = os.stat(dom / "pc.ram")
        assert st.st_size == 8 * MIB and oct(st.st_mode & 0o777) == oct(0o600)
        assert sorted(os.listdir(mp / "libvirt" / "qemu")) == ["3-instance-0001"]
        os.rename(dom / "pc.ram", dom / "ram-node0")
        os.chmod(dom, 0o750)
        assert os.listdir(dom) == ["ram-node0"]
        with pytest.raises(OSError):
            os.rmdir(dom)                      # not empty
        with pytest.raises(OSError):
            os.mknod(dom / "fifo", 0o600 | 0o010000)  # only directories and RAM files
        subprocess.run(["rm", "-r", str(mp / "libvirt" / "qemu" / "3-instance-0001")],
                       check=True)          # what libvirt does when the domain stops
        assert os.listdir(mp / "libvirt" / "qemu") == []
        assert d.stats()["protocol_errors"] == 0


def test_paging_under_a_resident_limit_keeps_every_page(workdir: Path) -> None:
    size = 64 * MIB
    with MemfsDaemon(workdir, {"reader_threads": 3}) as d:
        d.call("create", path="vm/pc.ram", size=size, resident_limit=size // 4)
        w = _worker(d.mountpoint / "vm/pc.ram", size, 10)
        out, _ = w.communicate(timeout=180)
        f = _file(d, "vm/pc.ram")
    assert w.returncode == 0, out
    assert "mismatches 0" in out
    assert f["page_outs"] > size // 4096, "the limit forced paging"
    assert f["lost"] == 0 and f["pins"] > 0
    # resident stays near the limit (hard limit = limit + 5%)
    assert f["resident"] <= (size // 4 // 4096) * 1.06


def test_full_page_store_refuses_page_outs_and_loses_nothing(workdir: Path) -> None:
    size = 32 * MIB
    with MemfsDaemon(workdir, {"page_store_mb": 8, "reader_threads": 3}) as d:
        d.call("create", path="vm/pc.ram", size=size, resident_limit=4 * MIB)
        w = _worker(d.mountpoint / "vm/pc.ram", size, 3)
        out, _ = w.communicate(timeout=180)
        st = d.stats()
        f = st["files"]["vm/pc.ram"]
        log = (workdir / "memfs.log").read_text()
    assert w.returncode == 0, out
    assert f["store_full"] > 0 and f["lost"] == 0
    assert st["store"]["used_pages"] <= 8 * MIB // 4096
    assert f["resident"] > 4 * MIB // 4096, "pages the store cannot take stay resident"
    assert "page store full" in log


def test_reclaim_of_unpinned_pages_loses_nothing(workdir: Path) -> None:
    """Without pinning, memcg reclaim drops clean pages: the kept copies serve them."""
    size = 32 * MIB
    with MemfsDaemon(workdir, {"pin_resident_pages": False}) as d, \
            MemoryCgroup(f"ipm-it-{os.getpid()}") as cg:
        d.call("create", path="vm/pc.ram", size=size, resident_limit=0)
        w = _worker(d.mountpoint / "vm/pc.ram", size, 6)
        cg.add(w.pid)
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "filled"
        time.sleep(1)
        freed = 0
        for _ in range(3):
            freed += cg.force_reclaim()
            time.sleep(0.5)
        out, _ = w.communicate(timeout=180)
        f = _file(d, "vm/pc.ram")
    assert w.returncode == 0, out
    assert f["refetched"] > 0, f"reclaim dropped no page (freed {freed})"
    assert f["lost"] == 0


def test_bad_control_requests_change_nothing(workdir: Path) -> None:
    with MemfsDaemon(workdir) as d:
        bad: list[dict[str, Any]] = [
                     {"path": "vm/a.ram", "size": 4095, "resident_limit": 0},
                     {"path": "vm/a.ram", "size": -4096, "resident_limit": 0},
                     {"path": "../escape", "size": 4096, "resident_limit": 0},
                     {"path": "vm/a.ram", "size": "big", "resident_limit": 0}]
        for args in bad:
            with pytest.raises(ControlError):
                d.call("create", **args)
        with pytest.raises(ControlError):
            d.call("set_limit", path="nope.ram", resident_limit=4096)
        with pytest.raises(ControlError):
            d.call("frobnicate")
        assert d.stats()["files"] == {}
        assert not (d.mountpoint / "vm").exists()


@contextlib.contextmanager
def _mapped_by_a_user(workdir: Path) -> Iterator[tuple[MemfsDaemon, subprocess.Popen[str]]]:
    """A daemon serving a RAM file that a running host process maps; both cleaned up."""
    size = 16 * MIB
    d = MemfsDaemon(workdir)
    d.start()
    w = None
    try:
        d.call("create", path="vm/pc.ram", size=size, resident_limit=size // 4)
        w = _worker(d.mountpoint / "vm/pc.ram", size, 60)
        assert w.stdout is not None and w.stdout.readline().strip() == "filled"
        yield d, w
    finally:
        force_unmount(d.mountpoint)   # abort first: a user blocked on the mount can then die
        if w is not None and w.poll() is None:
            w.kill()
            w.wait(timeout=30)
        d.stop()


def test_stop_while_a_user_maps_a_file_does_not_hang(workdir: Path) -> None:
    with _mapped_by_a_user(workdir) as (d, w):
        t0 = time.monotonic()
        d.stop()
        assert time.monotonic() - t0 < 40
        assert not _mounted(d.mountpoint)
        # the user gets an error (SIGBUS on its mapping), it does not hang
        assert w.wait(timeout=30) != 0


def test_killed_daemon_leaves_no_hung_mount(workdir: Path) -> None:
    with _mapped_by_a_user(workdir) as (d, w):
        # A crash: the daemon dies, possibly with a thread stuck in an invalidation
        # that only its dead readers could finish; its watchdog aborts the connection.
        os.kill(d.pid, signal.SIGKILL)
        rc = w.wait(timeout=30)
        assert rc != 0, "the user must fail, not hang"
        force_unmount(d.mountpoint)
        assert not _mounted(d.mountpoint)


def test_a_ram_file_of_the_agent_survives_libvirts_cleanup(workdir: Path) -> None:
    """libvirt removes a stopped domain's memory directory (``rm -r``); a RAM file the
    agent prepared (its pages may be elsewhere) must survive it: EBUSY."""
    with MemfsDaemon(workdir) as d:
        d.call("create", path="libvirt/qemu/1-oracle/pc.ram", size=4 * MIB, resident_limit=0)
        ram = d.mountpoint / "libvirt/qemu/1-oracle/pc.ram"
        fd = os.open(ram, os.O_RDWR)
        os.pwrite(fd, b"y" * 4096, 0)
        os.close(fd)
        rm = subprocess.run(["rm", "-r", str(ram.parent)], capture_output=True, text=True)
        assert rm.returncode != 0 and "busy" in rm.stderr.lower(), rm.stderr
        with pytest.raises(OSError) as exc:
            os.rename(ram, ram.with_name("other"))
        assert exc.value.errno == errno.EBUSY
        assert os.listdir(ram.parent) == ["pc.ram"]
        with open(ram, "rb") as f:
            assert f.read(4096) == b"y" * 4096
        assert "libvirt/qemu/1-oracle/pc.ram" in d.stats()["files"]
