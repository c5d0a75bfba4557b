"""The multi-host lab for real (root): namespaces, bridge, tc shaping, per-host
mount and UTS namespaces, and a clean-up after a crash that leaves nothing behind.

Every lab gets a unique prefix and its own state directory, and is brought down
in a ``finally``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_ipmigrate.lab import tcpbulk
from nova_ipmigrate.lab.hostns import parse_mountinfo
from nova_ipmigrate.lab.hosts import Lab, list_netns
from nova_ipmigrate.lab.memfsd import MemfsDaemon
from nova_ipmigrate.memfs import control

pytestmark = pytest.mark.integration


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network, mount and UTS namespaces, tc)")
    for tool in ("ip", "tc", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


def _root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def _root_mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [e.mountpoint for e in parse_mountinfo(f.read())
                if Path(e.mountpoint).is_relative_to(path)]


@pytest.fixture
def new_lab() -> Iterator[Lab]:
    """A lab with a unique prefix; whatever a test leaves is brought down."""
    _need_root()
    state_dir = Path(tempfile.mkdtemp(prefix="ipm-lab-it-"))
    lab = Lab(state_dir, f"ipmit{secrets.token_hex(3)}")
    try:
        yield lab
    finally:
        lab.down(grace=2)
        shutil.rmtree(state_dir, ignore_errors=True)


def test_three_shaped_hosts(new_lab: Lab) -> None:
    lab = new_lab
    links_before = _root_links()
    h1, h2, h3 = lab.up(3, link="100mbit")
    assert _root_links() == links_before  # nothing in the root network namespace

    if shutil.which("ping"):
        ping = subprocess.run(["ip", "netns", "exec", h1.netns, "ping", "-c1", "-W2",
                               h3.address], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    # and over TCP, through run_in (also where ping is not installed)
    probe = ("import socket,sys; socket.create_connection((sys.argv[1], 22), timeout=2)")
    refused = lab.run_in(h1.name, [sys.executable, "-c", probe, h3.address],
                         capture_output=True, text=True)
    assert "ConnectionRefusedError" in refused.stderr  # h3 answered: nothing listens there

    names = [lab.run_in(h.name, ["hostname"], capture_output=True, text=True,
                        check=True).stdout.strip() for h in (h1, h2, h3)]
    assert names == [h1.hostname, h2.hostname, h3.hostname] == [
        f"{lab.prefix}-h1", f"{lab.prefix}-h2", f"{lab.prefix}-h3"]
    assert os.uname().nodename not in names

    # private /run per host, seen from outside in the host's run directory
    lab.run_in(h1.name, ["sh", "-c", "echo h1 > /run/ipmigrate/who"], check=True)
    assert (h1.run_dir / "ipmigrate" / "who").read_text() == "h1\n"
    assert not (h2.run_dir / "ipmigrate" / "who").exists()
    assert lab.run_in(h2.name, ["test", "-e", "/run/ipmigrate/who"]).returncode == 1
    # sysfs of the host's network namespace; no route out of the lab
    net = lab.run_in(h2.name, ["ls", "/sys/class/net"], capture_output=True, text=True)
    assert net.stdout.split() == ["eth0", "lo"]
    routes = lab.run_in(h2.name, ["ip", "route", "show"], capture_output=True, text=True)
    assert "default" not in routes.stdout and f"{lab.subnet} dev eth0" in routes.stdout

    shaped = tcpbulk.measure(lab, "h1", "h3", seconds=2.0)
    lab.set_link(None)
    unshaped = tcpbulk.measure(lab, "h1", "h3", seconds=1.0)
    print(f"TCP h1->h3: 100mbit link {shaped.mbit_per_s:.1f} Mbit/s, "
          f"unshaped {unshaped.mbit_per_s:.1f} Mbit/s")
    assert 50 < shaped.mbit_per_s < 150
    assert unshaped.mbit_per_s > 3 * shaped.mbit_per_s

    status = lab.status()
    assert [(h.netns_exists, h.mount_ns_exists, h.link) for h in status.hosts] == [
        (True, True, None)] * 3
    assert status.hosts[0].eth0 == f"UP {h1.address}/24"


def _start_memfs(lab: Lab, host: str) -> tuple[subprocess.Popen[bytes], Path]:
    """ipmigrate-memfs inside ``host``; its mount is seen only there."""
    h = lab.host(host)
    daemon = MemfsDaemon(h.state_dir / "agent")
    daemon.workdir.mkdir(parents=True)
    proc = lab.exec_in(host, [sys.executable, "-m", "nova_ipmigrate.cmd.memfs",
                              "--config-file", str(daemon.write_config())],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            daemon.call("stats", timeout=2)  # the socket's path is seen from outside too
            return proc, daemon.mountpoint
        except control.ControlError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_down_after_a_crash_leaves_nothing(new_lab: Lab) -> None:
    links_before = _root_links()
    new_lab.up(2, link="1gbit")
    sleeper = new_lab.exec_in("h2", ["sh", "-c", "sleep 1000 & exec sleep 1000"])
    fuse_conn = None
    if os.path.exists("/dev/fuse"):
        memfs, mountpoint = _start_memfs(new_lab, "h1")
        mounts = new_lab.run_in("h1", ["cat", "/proc/self/mountinfo"], capture_output=True,
                                text=True, check=True).stdout
        (entry,) = [e for e in parse_mountinfo(mounts) if e.mountpoint == str(mountpoint)]
        fuse_conn = Path(f"/sys/fs/fuse/connections/{entry.dev[1]}")
        assert fuse_conn.exists()
        assert str(mountpoint) not in _root_mounts_under(new_lab.dir)  # only in h1
        os.kill(memfs.pid, signal.SIGSTOP)  # a hung agent: only the fusectl abort helps
    assert {f"{new_lab.prefix}-h1", f"{new_lab.prefix}-sw"} <= set(list_netns())

    # the lab process "crashes": a new one has only the state file to go by
    report = Lab.from_state_file(new_lab.state_file).down(grace=1)
    assert not report.leftovers, report
    assert sleeper.pid in report.killed and len(report.killed) >= 2  # and sleep's child
    assert not [n for n in list_netns() if n.startswith(f"{new_lab.prefix}-")]
    assert _root_links() == links_before
    assert not _root_mounts_under(new_lab.dir)
    assert not new_lab.dir.exists()
    assert sleeper.wait(timeout=5) == -signal.SIGTERM
    if fuse_conn is not None:
        assert report.unmounted == [str(mountpoint)]
        assert memfs.wait(timeout=5) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while fuse_conn.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fuse_conn.exists(), "FUSE connection of the crashed lab still there"
    again = new_lab.down()  # idempotent
    assert (again.killed, again.namespaces, again.leftovers) == ([], [], [])
