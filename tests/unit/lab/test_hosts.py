"""The multi-host lab with its system commands faked: topology commands, the state
file, crash clean-up, process records and host look-up (no root)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova_ipmigrate.lab import hosts
from nova_ipmigrate.lab.hosts import Lab, LabError

_real_kill = os.kill


class FakeSystem:
    """ip, tc, mount, nsenter and the process table, as far as the lab sees them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[list[str]] = []
        self.netns: set[str] = set()
        self.mounts: set[str] = set()
        self.nsfs: set[str] = set()
        self.members: set[int] = set()  # processes in the lab's namespaces
        self.ignore_term = False
        self.signals: list[tuple[int, int]] = []
        self.fail_on: str | None = None
        self.fake_pids: set[int] = set()
        monkeypatch.setattr(hosts, "_run", self.run)
        monkeypatch.setattr(hosts, "_mountpoints", lambda: self.mounts | self.nsfs)
        monkeypatch.setattr(hosts, "_nsfs_mountpoints", lambda: set(self.nsfs))
        monkeypatch.setattr(hosts, "processes_in", lambda namespaces: set(self.members))
        monkeypatch.setattr(hosts.os, "kill", self.kill)

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
        cmd = list(cmd)
        self.commands.append(cmd)
        rc, out = 0, ""
        if self.fail_on and self.fail_on in " ".join(cmd):
            rc = 1
        elif cmd[:3] == ["ip", "netns", "list"]:
            out = "".join(f"{n} (id: {i})\n" for i, n in enumerate(sorted(self.netns)))
        elif cmd[:3] == ["ip", "netns", "add"]:
            self.netns.add(cmd[3])
        elif cmd[:3] == ["ip", "netns", "del"]:
            rc = 0 if cmd[3] in self.netns else 1
            self.netns.discard(cmd[3])
        elif cmd[:2] == ["mount", "--bind"]:
            self.mounts.add(cmd[3])
        elif cmd[0] == "umount":
            self.mounts.discard(cmd[-1])
            self.nsfs.discard(cmd[-1])
        elif cmd[0] == "nsenter" and "unshare" in cmd:
            self.nsfs |= {a.split("=", 1)[1] for a in cmd
                          if a.startswith(("--mount=", "--uts="))}
        if check and rc:
            raise LabError(f"{' '.join(cmd)}: failed")
        return subprocess.CompletedProcess(cmd, rc, out, "")

    def kill(self, pid: int, sig: int) -> None:
        if pid not in self.fake_pids:  # a real process (the tests' own children)
            _real_kill(pid, sig)
            return
        self.signals.append((pid, sig))
        if sig == signal.SIGKILL or not self.ignore_term:
            self.members.discard(pid)

    def ran(self, *words: str) -> list[list[str]]:
        return [c for c in self.commands if all(w in c for w in words)]


@pytest.fixture
def system(monkeypatch: pytest.MonkeyPatch) -> FakeSystem:
    return FakeSystem(monkeypatch)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path, "ipmt")


def test_up_builds_the_topology(system: FakeSystem, lab: Lab) -> None:
    up = lab.up(2, "100MBit")
    assert [(h.name, h.netns, h.address, h.link) for h in up] == [
        ("h1", "ipmt-h1", "10.254.0.2", "100mbit"), ("h2", "ipmt-h2", "10.254.0.3", "100mbit")]
    assert system.netns == {"ipmt-sw", "ipmt-h1", "ipmt-h2"}
    assert ["ip", "-n", "ipmt-sw", "link", "add", "br0", "type", "bridge"] in system.commands
    # both ends of the veth pair are created in their namespaces: none in the root one
    assert ["ip", "link", "add", "eth0", "netns", "ipmt-h2", "type", "veth", "peer", "name",
            "h2", "netns", "ipmt-sw"] in system.commands
    assert ["ip", "-n", "ipmt-sw", "link", "set", "h2", "master", "br0", "up"] \
        in system.commands
    assert ["ip", "-n", "ipmt-h1", "addr", "add", "10.254.0.2/24", "dev", "eth0"] \
        in system.commands
    assert not [c for c in system.commands if "route" in c]
    tc = system.ran("tc", "replace")
    links = {("ipmt-h1", "eth0"), ("ipmt-sw", "h1"), ("ipmt-h2", "eth0"), ("ipmt-sw", "h2")}
    buckets = [c for c in tc if "tbf" in c]
    assert {(c[2], c[6]) for c in buckets} == links
    assert all("100000000bit" in c for c in buckets)
    # inside every bucket, priority bands: page-in answers pass a part move's data
    bands = [c for c in tc if "pfifo_fast" in c]
    assert {(c[2], c[6]) for c in bands} == links
    assert system.ran("mount", "--make-private", str(lab.ns_dir))
    (unshare,) = system.ran("unshare", f"--mount={lab.ns_dir}/h1.mnt")
    assert unshare[:2] == ["nsenter", "--net=/run/netns/ipmt-h1"]
    assert unshare[unshare.index("init") + 1:] == [
        "--hostname", "ipmt-h1", "--run-dir", str(lab.dir / "hosts" / "h1" / "run")]
    assert (lab.dir / "hosts" / "h2" / "run").is_dir()
    state = json.loads(lab.state_file.read_text())
    assert state["prefix"] == "ipmt" and state["switch"]["netns"] == "ipmt-sw"
    assert [h["address"] for h in state["hosts"]] == ["10.254.0.2", "10.254.0.3"]


def test_unshaped_up_runs_no_tc(system: FakeSystem, lab: Lab) -> None:
    lab.up(1)
    assert not system.ran("tc")
    assert lab.host(1).link is None


def test_up_refuses_a_lab_that_is_up(system: FakeSystem, lab: Lab) -> None:
    lab.up(1)
    with pytest.raises(LabError, match="already up"):
        lab.up(1)


def test_up_refuses_leftover_namespaces(system: FakeSystem, lab: Lab) -> None:
    system.netns = {"ipmt-h3"}
    with pytest.raises(LabError, match="run down first"):
        lab.up(1)


def test_failed_up_removes_what_it_created(system: FakeSystem, lab: Lab) -> None:
    system.fail_on = "peer name h2"
    with pytest.raises(LabError, match="peer name h2"):
        lab.up(3)
    assert system.netns == set()
    assert system.nsfs == set() and system.mounts == set()
    assert not lab.dir.exists()


@pytest.mark.parametrize(("n", "subnet"), [(0, "10.254.0.0/24"), (6, "10.9.0.0/29"),
                                           (251, "10.0.0.0/16")])
def test_host_count_must_fit(system: FakeSystem, tmp_path: Path, n: int, subnet: str) -> None:
    with pytest.raises(LabError, match="cannot put"):
        Lab(tmp_path, "ipmt", subnet).up(n)
    assert system.netns == set()


def test_small_subnet_addresses(system: FakeSystem, tmp_path: Path) -> None:
    up = Lab(tmp_path, "ipmt", "10.9.0.8/29").up(5)
    assert [h.address for h in up] == [f"10.9.0.{i}" for i in range(10, 15)]
    assert up[0].prefixlen == 29


@pytest.mark.parametrize("prefix", ["", "Ipm", "1pm", "ipm_x", "ipm-", "a" * 17, "../x"])
def test_invalid_prefix(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(LabError, match="prefix"):
        Lab(tmp_path, prefix)


@pytest.mark.parametrize("subnet", ["10.254.0.1/24", "fd00::/64", "nonsense"])
def test_invalid_subnet(tmp_path: Path, subnet: str) -> None:
    with pytest.raises(LabError, match="subnet"):
        Lab(tmp_path, "ipm", subnet)


def test_host_lookup(system: FakeSystem, lab: Lab) -> None:
    lab.up(2)
    h2 = lab.host(2)
    assert lab.host("h2") == lab.host("2") == lab.host("ipmt-h2") == h2
    assert h2.hostname == "ipmt-h2" and h2.state_dir == lab.dir / "hosts" / "h2"
    assert h2.run_dir == h2.state_dir / "run"
    with pytest.raises(LabError, match="no host 'h3'"):
        lab.host("h3")


def test_host_lookup_when_down(lab: Lab) -> None:
    with pytest.raises(LabError, match="not up"):
        lab.host(1)


def test_enter_command(system: FakeSystem, lab: Lab) -> None:
    lab.up(1)
    h = lab.host(1)
    assert h.enter_command(["ip", "addr"], cwd="/tmp") == [
        "nsenter", "--net=/run/netns/ipmt-h1", f"--mount={lab.ns_dir}/h1.mnt",
        f"--uts={lab.ns_dir}/h1.uts", "--wd=/tmp", "--", "ip", "addr"]
    assert f"--wd={os.getcwd()}" in h.enter_command(["true"])


def test_set_link(system: FakeSystem, lab: Lab) -> None:
    lab.up(2, "1gbit")
    system.commands.clear()
    lab.set_link(None, hosts=["h2"])
    assert system.ran("tc", "del") == [
        ["tc", "-n", "ipmt-h2", "qdisc", "del", "dev", "eth0", "root"],
        ["tc", "-n", "ipmt-sw", "qdisc", "del", "dev", "h2", "root"]]
    assert [h.link for h in lab.hosts] == ["1gbit", None]
    lab.set_link("10mbit")
    assert [h.link for h in Lab(lab.dir.parent, "ipmt").hosts] == ["10mbit", "10mbit"]


def test_state_round_trip(system: FakeSystem, lab: Lab) -> None:
    lab.up(2, "1gbit")
    state = hosts.LabState.from_dict(json.loads(lab.state_file.read_text()))
    assert state.hosts == lab.hosts
    assert hosts.LabState.from_dict(state.to_dict()) == state
    again = Lab.from_state_file(lab.state_file)
    assert (again.prefix, again.dir, again.subnet) == (lab.prefix, lab.dir, lab.subnet)


def test_state_of_another_version_is_refused(lab: Lab) -> None:
    lab.dir.mkdir(parents=True)
    lab.state_file.write_text(json.dumps({"version": 99}))
    with pytest.raises(LabError, match="version"):
        lab.host(1)
    with pytest.raises(LabError, match="cannot read"):
        Lab.from_state_file(lab.state_file)


@pytest.fixture
def sleeper(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """exec_in runs its command directly instead of through nsenter."""
    monkeypatch.setattr(hosts.LabHost, "enter_command",
                        lambda self, argv, cwd=None: list(argv))
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_exec_in_records_processes(system: FakeSystem, lab: Lab,
                                   sleeper: list[subprocess.Popen[bytes]]) -> None:
    lab.up(2)
    first = lab.exec_in("h1", ["sleep", "30"])
    sleeper.append(first)
    assert first.pid != os.getpgid(0) and os.getpgid(first.pid) == first.pid  # own session
    state = json.loads(lab.state_file.read_text())
    (rec,) = state["processes"]
    assert (rec["pid"], rec["host"], rec["argv"]) == (first.pid, "h1", ["sleep", "30"])
    assert rec["start_time"] == hosts.process_start_time(first.pid)
    assert [(p.pid, p.alive) for p in lab.status().processes] == [(first.pid, True)]
    first.kill()
    first.wait()
    second = lab.exec_in(2, ["sleep", "30"])
    sleeper.append(second)
    # records of processes that are gone are dropped when the next one is recorded
    assert [p["pid"] for p in json.loads(lab.state_file.read_text())["processes"]] == [
        second.pid]


def test_a_reused_pid_is_not_taken_for_a_recorded_process() -> None:
    rec = hosts.ProcessRecord(os.getpid(), (hosts.process_start_time(os.getpid()) or 0) + 1,
                              "h1", ["x"])
    assert not hosts._record_running(rec)
    assert hosts._record_running(hosts.ProcessRecord(
        os.getpid(), hosts.process_start_time(os.getpid()) or 0, "h1", ["x"]))


def test_down_after_a_crash(system: FakeSystem, lab: Lab) -> None:
    lab.up(2, "1gbit")
    system.members, system.fake_pids = {4242, 4243}, {4242, 4243}
    # the lab process is gone: a new one knows only the state file
    report = Lab.from_state_file(lab.state_file).down(grace=1)
    assert sorted(report.killed) == [4242, 4243]
    assert system.signals == [(4242, signal.SIGTERM), (4243, signal.SIGTERM)]
    assert sorted(report.namespaces) == ["ipmt-h1", "ipmt-h2", "ipmt-sw"]
    assert system.netns == set() and system.nsfs == set() and system.mounts == set()
    assert not report.leftovers
    assert not lab.dir.exists()
    for name in ("h1", "h2"):  # FUSE mounts are cleared inside each host's mount namespace
        (cmd,) = system.ran("unmount-fuse", str(lab.dir / "hosts" / name))
        assert cmd[:2] == ["nsenter", f"--mount={lab.ns_dir}/{name}.mnt"]
        assert cmd[-1] == "/run"


def test_down_kills_what_ignores_sigterm(system: FakeSystem, lab: Lab) -> None:
    lab.up(1)
    system.members, system.fake_pids = {4242}, {4242}
    system.ignore_term = True
    report = lab.down(grace=0.1)
    assert system.signals == [(4242, signal.SIGTERM), (4242, signal.SIGKILL)]
    assert report.killed == [4242] and not report.leftovers


def test_down_reports_what_survives(system: FakeSystem, lab: Lab,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lab.up(1)
    system.fake_pids = {4242}
    monkeypatch.setattr(hosts, "processes_in", lambda namespaces: {4242})
    monkeypatch.setattr(hosts.Lab, "_wait_gone",
                        staticmethod(lambda targets, timeout: targets()))
    report = lab.down()
    assert report.leftovers == ["process 4242 did not die"]


def test_down_is_idempotent(system: FakeSystem, lab: Lab) -> None:
    lab.up(1)
    lab.down()
    system.commands.clear()
    report = lab.down()
    assert report.killed == [] and report.namespaces == [] and report.leftovers == []
    assert not system.ran("ip", "netns", "del")
    assert not lab.dir.exists()


def test_down_without_state_finds_namespaces_by_name(system: FakeSystem, lab: Lab) -> None:
    system.netns = {"ipmt-h1", "ipmt-h12", "ipmt-sw", "ipmt2-h1", "ipmt-hx", "other"}
    lab.ns_dir.mkdir(parents=True)
    system.nsfs = {str(lab.ns_dir / "h1.mnt")}
    system.mounts = {str(lab.ns_dir)}
    report = lab.down()
    assert sorted(report.namespaces) == ["ipmt-h1", "ipmt-h12", "ipmt-sw"]
    assert system.netns == {"ipmt2-h1", "ipmt-hx", "other"}
    assert system.nsfs == set() and system.mounts == set()
    assert not lab.dir.exists()


def test_down_survives_a_corrupt_state_file(system: FakeSystem, lab: Lab) -> None:
    lab.up(1)
    lab.state_file.write_text("{not json")
    report = lab.down()
    assert report.namespaces == ["ipmt-h1", "ipmt-sw"]
    assert report.leftovers[0].startswith("ignored state: corrupt lab state")
    assert not lab.dir.exists()


def test_status(system: FakeSystem, lab: Lab) -> None:
    assert not lab.status().up
    system.netns.add("ipmt-h7")
    assert lab.status().stray_namespaces == ["ipmt-h7"]
    system.netns.clear()
    lab.up(2, "1gbit")
    system.netns.discard("ipmt-h2")
    system.netns.add("ipmt-h9")
    status = lab.status()
    assert status.up and status.switch_exists and status.subnet == "10.254.0.0/24"
    assert [(h.name, h.netns_exists, h.mount_ns_exists) for h in status.hosts] == [
        ("h1", True, True), ("h2", False, True)]
    assert status.stray_namespaces == ["ipmt-h9"]
    assert json.loads(json.dumps(status.to_dict()))["hosts"][0]["link"] == "1gbit"
    text = status.summary()
    assert "2 hosts" in text and "MISSING" in text and "ipmt-h9" in text
