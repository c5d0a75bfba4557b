"""The multi-host lab: compute hosts as namespaces on one machine.

Owns the lab's topology and lifecycle (``up``, ``down``, ``status``, link
shaping), the state file that lists everything the lab created, and starting
processes inside a host. What runs inside a host to set it up is
:mod:`nova_ipmigrate.lab.hostns`; tc rates are :mod:`nova_ipmigrate.lab.shaping`.

Topology: nothing is created in the root network namespace::

    <prefix>-sw   switch netns: bridge br0, one port hN per host
                     | veth pair (shaped on both ends when the link is)
    <prefix>-hN   host netns: eth0 = 10.254.0.(N+1)/24, lo; no default route

A host is three namespaces that every process started in it enters together
(``nsenter``): its network namespace (``ip netns``, ``/run/netns/<prefix>-hN``),
and a mount and a UTS namespace (hostname ``<prefix>-hN``) created once by
``up`` with ``unshare`` and kept as namespace files bind-mounted in
``<lab dir>/ns`` (a private mount, which the kernel requires for mount-namespace
files). One mount namespace per host, not per process: a FUSE mount made by a
host's agent is seen by that host's QEMU and libvirtd and by no other host.
Each host's ``/run`` is its own directory ``<lab dir>/hosts/hN/run`` (private
``/run/ipmigrate``, ``/run/libvirt``, pid files), and ``<lab dir>/hosts/hN`` is
its state directory at the same path inside and outside the host: the lab
gives it to the host's agent as ``state_path``.

Crash safety: the state file (``<lab dir>/lab.json``) is written before anything
is created; ``down`` also finds the lab's namespaces by name, and kills every
process found in them (not only the recorded ones), so it leaves nothing behind
after a crash of the lab process or of ``up`` half-way, and is idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from oslo_config import cfg

from nova_ipmigrate.lab import shaping
from nova_ipmigrate.lab.hostns import MountEntry, parse_mountinfo

STATE_VERSION = 1
BRIDGE = "br0"
HOST_IFACE = "eth0"
NETNS_DIR = Path("/run/netns")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
MAX_PREFIX = 16
MAX_HOSTS = 250  # host names and bridge ports stay short; far more than one machine runs


class LabError(RuntimeError):
    """A lab operation failed; the message says what and how to recover."""


# -- the state file -------------------------------------------------------------------


@dataclass(frozen=True)
class LabHost:
    """One compute host of the lab."""

    index: int
    name: str  # hN: the host's name inside the lab (``exec h2 -- ...``)
    netns: str  # <prefix>-hN: network namespace and hostname
    address: str
    prefixlen: int
    link: str | None  # tc rate of its link, None when unshaped
    state_dir: Path
    mnt_ns: Path
    uts_ns: Path

    @property
    def hostname(self) -> str:
        return self.netns

    @property
    def run_dir(self) -> Path:
        """The host's /run, as seen from outside the host."""
        return self.state_dir / "run"

    @property
    def switch_port(self) -> str:
        """The switch end of the host's veth pair, a port of the bridge."""
        return self.name

    def enter_command(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None
                      ) -> list[str]:
        """``argv`` run inside the host's network, mount and UTS namespaces.

        Entering a mount namespace resets the working directory, so ``cwd`` (default:
        the caller's) is given to nsenter.
        """
        return ["nsenter", f"--net={NETNS_DIR / self.netns}", f"--mount={self.mnt_ns}",
                f"--uts={self.uts_ns}", f"--wd={cwd if cwd is not None else os.getcwd()}",
                "--", *argv]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("state_dir", "mnt_ns", "uts_ns"):
            d[key] = str(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabHost:
        return cls(index=int(d["index"]), name=d["name"], netns=d["netns"],
                   address=d["address"], prefixlen=int(d["prefixlen"]), link=d["link"],
                   state_dir=Path(d["state_dir"]), mnt_ns=Path(d["mnt_ns"]),
                   uts_ns=Path(d["uts_ns"]))


@dataclass(frozen=True)
class ProcessRecord:
    """A process started in a host; ``start_time`` (clock ticks after boot, from
    /proc/<pid>/stat) tells it from a later process that got the same pid."""

    pid: int
    start_time: int
    host: str
    argv: list[str]


@dataclass
class LabState:
    prefix: str
    subnet: str
    switch_netns: str
    hosts: list[LabHost] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "prefix": self.prefix, "subnet": self.subnet,
                "switch": {"netns": self.switch_netns, "bridge": BRIDGE},
                "hosts": [h.to_dict() for h in self.hosts],
                "processes": [asdict(p) for p in self.processes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabState:
        if d.get("version") != STATE_VERSION:
            raise LabError(f"lab state version {d.get('version')!r} is not {STATE_VERSION}")
        return cls(prefix=d["prefix"], subnet=d["subnet"], switch_netns=d["switch"]["netns"],
                   hosts=[LabHost.from_dict(h) for h in d["hosts"]],
                   processes=[ProcessRecord(**p) for p in d["processes"]])


# -- processes --------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def process_start_time(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _running(pid: int) -> bool:
    """Exists and is not a zombie (a killed child of ours stays one until reaped)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _record_running(rec: ProcessRecord) -> bool:
    stat = _proc_stat(rec.pid)
    return stat is not None and stat[0] != "Z" and stat[1] == rec.start_time


NsId = tuple[int, int]  # (st_dev, st_ino) of a namespace


def _ns_id(path: str | Path) -> NsId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def processes_in(namespaces: set[NsId]) -> set[int]:
    """Every running process whose network, mount or UTS namespace is one of these."""
    found: set[int] = set()
    if not namespaces:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        for kind in ("net", "mnt", "uts"):
            if _ns_id(f"/proc/{entry}/ns/{kind}") in namespaces:
                if _running(int(entry)):
                    found.add(int(entry))
                break
    return found


# -- commands ---------------------------------------------------------------------------


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 60.0
         ) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _root_mounts() -> list[MountEntry]:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def _mountpoints() -> set[str]:
    return {e.mountpoint for e in _root_mounts()}


def _nsfs_mountpoints() -> set[str]:
    return {e.mountpoint for e in _root_mounts() if e.fstype == "nsfs"}


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# -- status -----------------------------------------------------------------------------


@dataclass
class HostStatus:
    name: str
    hostname: str
    netns: str
    address: str
    link: str | None
    netns_exists: bool
    mount_ns_exists: bool
    eth0: str | None  # "UP 10.254.0.2/24", None when it cannot be read
    qdisc: str | None  # tc's line for the host end of the link


@dataclass
class ProcessStatus:
    pid: int
    host: str
    argv: list[str]
    alive: bool


@dataclass
class LabStatus:
    prefix: str
    state_file: str
    up: bool
    subnet: str | None = None
    switch_netns: str | None = None
    switch_exists: bool = False
    hosts: list[HostStatus] = field(default_factory=list)
    processes: list[ProcessStatus] = field(default_factory=list)
    stray_namespaces: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.up:
            lines = [f"lab {self.prefix}: down (no state at {self.state_file})"]
        else:
            lines = [f"lab {self.prefix}: {len(self.hosts)} hosts on {self.subnet}, switch "
                     f"{self.switch_netns} ({'present' if self.switch_exists else 'MISSING'})"]
        for h in self.hosts:
            ns = "ok" if h.netns_exists and h.mount_ns_exists else "MISSING namespaces"
            lines.append(f"  {h.name}  {h.hostname:<16} {h.address:<15} "
                         f"link {h.link or 'unshaped':<9} eth0 {h.eth0 or '?'}  {ns}")
        for p in self.processes:
            lines.append(f"  pid {p.pid:<7} on {p.host:<4} {'alive' if p.alive else 'gone '}  "
                         f"{' '.join(p.argv)[:80]}")
        if self.stray_namespaces:
            lines.append(f"  stray namespaces (run down): {' '.join(self.stray_namespaces)}")
        return "\n".join(lines)


@dataclass
class DownReport:
    killed: list[int] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    def summary(self, prefix: str) -> str:
        parts = [f"lab {prefix}: down; removed {len(self.namespaces)} namespaces, "
                 f"killed {len(self.killed)} processes"]
        if self.unmounted:
            parts.append(f"unmounted {', '.join(self.unmounted)}")
        if self.leftovers:
            parts.append(f"LEFT OVER: {'; '.join(self.leftovers)}")
        return "; ".join(parts)


# -- the lab ----------------------------------------------------------------------------


class Lab:
    """A lab named by ``prefix`` whose state lives in ``<state_dir>/<prefix>``.

    Holds no state in memory: every call reads the state file, so a new ``Lab``
    for the same prefix and state directory (after a crash, or from another
    process such as ``ipmigrate-lab``) sees and cleans up the same lab.
    """

    def __init__(self, state_dir: str | os.PathLike[str], prefix: str = "ipm",
                 subnet: str = "10.254.0.0/24") -> None:
        if not PREFIX_RE.match(prefix) or len(prefix) > MAX_PREFIX:
            raise LabError(f"invalid lab prefix {prefix!r}: lowercase letters, digits and "
                           f"inner dashes, starting with a letter, at most {MAX_PREFIX}")
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise LabError(f"invalid lab subnet {subnet!r}: {exc}") from exc
        self.prefix = prefix
        self.subnet = str(net)
        self.dir = Path(state_dir) / prefix
        self.state_file = self.dir / "lab.json"
        self.ns_dir = self.dir / "ns"
        self.hosts_dir = self.dir / "hosts"
        self.switch_netns = f"{prefix}-sw"

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, prefix: str | None = None) -> Lab:
        return cls(conf.lab.state_dir, prefix or conf.lab.prefix, conf.lab.subnet)

    @classmethod
    def from_state_file(cls, path: str | os.PathLike[str]) -> Lab:
        """The lab a state file describes (``<state_dir>/<prefix>/lab.json``)."""
        path = Path(path)
        try:
            state = LabState.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, LabError) as exc:
            raise LabError(f"cannot read lab state {path}: {exc}") from exc
        return cls(path.parent.parent, state.prefix, state.subnet)

    # -- state file

    def _read(self) -> LabState | None:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LabError(f"cannot read lab state {self.state_file}: {exc}") from exc
        try:
            return LabState.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise LabError(f"corrupt lab state {self.state_file}: {exc}") from exc

    def _write(self, state: LabState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serializes changes of the state file between processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lab.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _state(self) -> LabState:
        state = self._read()
        if state is None or not state.hosts:
            raise LabError(f"lab {self.prefix} is not up (no state at {self.state_file})")
        return state

    # -- hosts

    @property
    def hosts(self) -> list[LabHost]:
        return self._state().hosts

    def host(self, ref: int | str) -> LabHost:
        """A host by index (1), lab name (``h1``) or hostname (``<prefix>-h1``)."""
        hosts = self.hosts
        for h in hosts:
            if ref in (h.index, h.name, h.netns, str(h.index)):
                return h
        names = ", ".join(h.name for h in hosts)
        raise LabError(f"lab {self.prefix} has no host {ref!r} (hosts: {names})")

    def _plan(self, n_hosts: int, link: str | None) -> LabState:
        net = ipaddress.IPv4Network(self.subnet)
        if not 1 <= n_hosts <= min(MAX_HOSTS, net.num_addresses - 3):
            raise LabError(f"cannot put {n_hosts} hosts in {self.subnet} (1 to "
                           f"{min(MAX_HOSTS, net.num_addresses - 3)})")
        hosts = []
        for i in range(1, n_hosts + 1):
            name = f"h{i}"
            hosts.append(LabHost(index=i, name=name, netns=f"{self.prefix}-{name}",
                                 address=str(net.network_address + i + 1),
                                 prefixlen=net.prefixlen, link=link,
                                 state_dir=self.hosts_dir / name,
                                 mnt_ns=self.ns_dir / f"{name}.mnt",
                                 uts_ns=self.ns_dir / f"{name}.uts"))
        return LabState(self.prefix, self.subnet, self.switch_netns, hosts)

    def _lab_netns(self) -> list[str]:
        """Namespaces named like this lab's, whatever the state file says."""
        pattern = re.compile(rf"^{re.escape(self.prefix)}-(sw|h\d+)$")
        return [n for n in list_netns() if pattern.match(n)]

    # -- up

    def up(self, n_hosts: int, link: str | None = None) -> list[LabHost]:
        """Create the switch and ``n_hosts`` hosts, each link shaped to ``link``.

        On any failure everything created so far is removed again (``down``).
        """
        link = shaping.normalize_link(link)
        with self._locked():
            existing = self._read()
            if existing is not None and existing.hosts:
                raise LabError(f"lab {self.prefix} is already up with {len(existing.hosts)} "
                               f"hosts ({self.state_file}); run down first")
            stray = self._lab_netns()
            if stray:
                raise LabError(f"namespaces of an earlier lab {self.prefix} exist "
                               f"({' '.join(stray)}); run down first")
            state = self._plan(n_hosts, link)
            self._write(state)  # before creating anything: down must find it all
        try:
            self._create_switch()
            self._ensure_ns_dir()
            for host in state.hosts:
                self._create_host(host)
        except BaseException:
            self.down()
            raise
        return state.hosts

    def _create_switch(self) -> None:
        sw = self.switch_netns
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", BRIDGE, "up"])

    def _ensure_ns_dir(self) -> None:
        """Namespace files of mount namespaces must lie on a private mount."""
        self.ns_dir.mkdir(parents=True, exist_ok=True)
        if str(self.ns_dir) not in _mountpoints():
            _run(["mount", "--bind", str(self.ns_dir), str(self.ns_dir)])
            _run(["mount", "--make-private", str(self.ns_dir)])

    def _create_host(self, h: LabHost) -> None:
        sw = self.switch_netns
        _run(["ip", "netns", "add", h.netns])
        _run(["ip", "link", "add", HOST_IFACE, "netns", h.netns, "type", "veth",
              "peer", "name", h.switch_port, "netns", sw])
        _run(["ip", "-n", sw, "link", "set", h.switch_port, "master", BRIDGE, "up"])
        _run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", h.netns, "addr", "add", f"{h.address}/{h.prefixlen}",
              "dev", HOST_IFACE])
        _run(["ip", "-n", h.netns, "link", "set", HOST_IFACE, "up"])
        if h.link is not None:
            self._shape(h, h.link)
        h.run_dir.mkdir(parents=True, exist_ok=True)
        for ns_file in (h.mnt_ns, h.uts_ns):
            ns_file.touch()
        _run(["nsenter", f"--net={NETNS_DIR / h.netns}", "unshare", f"--mount={h.mnt_ns}",
              f"--uts={h.uts_ns}", "--propagation", "private", "--",
              sys.executable, "-m", "nova_ipmigrate.lab.hostns", "init",
              "--hostname", h.hostname, "--run-dir", str(h.run_dir)])

    def _shape(self, h: LabHost, link: str | None) -> None:
        for netns, dev in ((h.netns, HOST_IFACE), (self.switch_netns, h.switch_port)):
            # deleting a root qdisc that is not there fails, and is what we want
            _run(shaping.qdisc_command(netns, dev, link), check=link is not None)
            if link is not None:
                _run(shaping.prio_command(netns, dev))

    def set_link(self, link: str | None, hosts: Sequence[int | str] | None = None) -> None:
        """Reshape the links of ``hosts`` (default: all) to ``link`` (None: unshaped)."""
        link = shaping.normalize_link(link)
        targets = {self.host(ref).name for ref in hosts} if hosts is not None else None
        with self._locked():
            state = self._state()
            new_hosts = []
            for h in state.hosts:
                if targets is None or h.name in targets:
                    self._shape(h, link)
                    h = replace(h, link=link)
                new_hosts.append(h)
            state.hosts = new_hosts
            self._write(state)

    # -- processes in hosts

    def exec_in(self, host: int | str, argv: Sequence[str], **popen_kwargs: Any
                ) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host`` and record it for ``down``.

        ``popen_kwargs`` go to :class:`subprocess.Popen`; ``cwd`` is applied inside
        the host. The process gets its own session unless ``start_new_session=False``.
        """
        h = self.host(host)
        cwd = popen_kwargs.pop("cwd", None)
        popen_kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(h.enter_command(argv, cwd),
                                                       **popen_kwargs)
        start_time = process_start_time(proc.pid)
        if start_time is not None:
            with self._locked():
                state = self._state()
                state.processes = [p for p in state.processes if _record_running(p)]
                state.processes.append(ProcessRecord(proc.pid, start_time, h.name,
                                                     list(argv)))
                self._write(state)
        return proc

    def run_in(self, host: int | str, argv: Sequence[str], **run_kwargs: Any
               ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in ``host`` to completion (:func:`subprocess.run` arguments).

        Not recorded: the caller waits for it; ``down`` kills it anyway if it is
        still in the host.
        """
        h = self.host(host)
        cwd = run_kwargs.pop("cwd", None)
        return subprocess.run(h.enter_command(argv, cwd), **run_kwargs)

    # -- status

    def status(self) -> LabStatus:
        state = self._read()
        status = LabStatus(prefix=self.prefix, state_file=str(self.state_file),
                           up=state is not None and bool(state.hosts))
        existing = set(self._lab_netns())
        if state is None:
            status.stray_namespaces = sorted(existing)
            return status
        nsfs = _nsfs_mountpoints()
        status.subnet = state.subnet
        status.switch_netns = state.switch_netns
        status.switch_exists = state.switch_netns in existing
        for h in state.hosts:
            status.hosts.append(HostStatus(
                name=h.name, hostname=h.hostname, netns=h.netns, address=h.address,
                link=h.link, netns_exists=h.netns in existing,
                mount_ns_exists=str(h.mnt_ns) in nsfs and str(h.uts_ns) in nsfs,
                eth0=self._eth0_state(h) if h.netns in existing else None,
                qdisc=self._qdisc(h) if h.netns in existing else None))
        status.processes = [ProcessStatus(p.pid, p.host, p.argv, _record_running(p))
                            for p in state.processes]
        known = {state.switch_netns, *(h.netns for h in state.hosts)}
        status.stray_namespaces = sorted(existing - known)
        return status

    @staticmethod
    def _eth0_state(h: LabHost) -> str | None:
        proc = _run(["ip", "-n", h.netns, "-j", "addr", "show", "dev", HOST_IFACE],
                    check=False)
        try:
            (info,) = json.loads(proc.stdout)
        except ValueError:
            return None
        addrs = [f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", [])
                 if a.get("family") == "inet"]
        return " ".join([info.get("operstate", "?"), *addrs])

    @staticmethod
    def _qdisc(h: LabHost) -> str | None:
        proc = _run(["tc", "-n", h.netns, "qdisc", "show", "dev", HOST_IFACE, "root"],
                    check=False)
        if proc.returncode != 0:
            return None
        return proc.stdout.strip() or None

    # -- down

    def down(self, grace: float = 5.0) -> DownReport:
        """Remove everything the lab created, even after a crash; idempotent.

        Processes in the hosts get SIGTERM and ``grace`` seconds; then FUSE mounts
        below the hosts' state directories and /run are aborted and lazily unmounted
        inside each host; then SIGKILL; then the namespace files, the namespaces
        (which takes the veth pairs and the bridge with them) and the lab directory
        go.
        """
        report = DownReport()
        state = self._read_for_down(report)
        netns = set(self._lab_netns())  # the state's names follow the same pattern
        host_dirs = self._host_dirs(state)
        nsfs = _nsfs_mountpoints()
        ns_files = sorted(p for p in nsfs if Path(p).parent == self.ns_dir)
        namespaces = {i for i in (_ns_id(NETNS_DIR / n) for n in netns) if i is not None}
        namespaces |= {i for i in (_ns_id(p) for p in ns_files) if i is not None}
        recorded = state.processes if state is not None else []

        def targets() -> set[int]:
            return processes_in(namespaces) | {p.pid for p in recorded if _record_running(p)}

        self._signal(targets(), signal.SIGTERM, report)
        remaining = self._wait_gone(targets, grace)
        for name, host_dir in sorted(host_dirs.items()):
            mnt_ns = str(self.ns_dir / f"{name}.mnt")
            if mnt_ns in nsfs:
                report.unmounted += self._unmount_fuse_in(mnt_ns, host_dir, report)
        if remaining:
            self._signal(targets(), signal.SIGKILL, report)
            remaining = self._wait_gone(targets, 5.0)
        report.leftovers += [f"process {pid} did not die" for pid in sorted(remaining)]

        for path in ns_files:
            _run(["umount", "--lazy", path], check=False)
        for name in sorted(netns):
            if _run(["ip", "netns", "del", name], check=False).returncode == 0:
                report.namespaces.append(name)
            else:
                report.leftovers.append(f"namespace {name}")
        if self.dir.exists():
            inside = [m for m in _mountpoints() if Path(m).is_relative_to(self.dir)]
            for path in sorted(inside, key=len, reverse=True):
                _run(["umount", "--lazy", path], check=False)
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.dir.exists():
                report.leftovers.append(f"directory {self.dir}")
        return report

    def _read_for_down(self, report: DownReport) -> LabState | None:
        try:
            return self._read()
        except LabError as exc:  # a broken state file must not stop the clean-up
            report.leftovers.append(f"ignored state: {exc}")
            return None

    def _host_dirs(self, state: LabState | None) -> dict[str, Path]:
        dirs = {h.name: h.state_dir for h in state.hosts} if state is not None else {}
        if self.hosts_dir.is_dir():
            for d in self.hosts_dir.iterdir():
                dirs.setdefault(d.name, d)
        return dirs

    @staticmethod
    def _signal(pids: set[int], sig: signal.Signals, report: DownReport) -> None:
        for pid in sorted(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
            if pid not in report.killed:
                report.killed.append(pid)

    @staticmethod
    def _wait_gone(targets: Callable[[], set[int]], timeout: float) -> set[int]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = targets()
            if not remaining or time.monotonic() >= deadline:
                return remaining
            time.sleep(0.05)

    @staticmethod
    def _unmount_fuse_in(mnt_ns: str, host_dir: Path, report: DownReport) -> list[str]:
        cmd = ["nsenter", f"--mount={mnt_ns}", "--", sys.executable, "-m",
               "nova_ipmigrate.lab.hostns", "unmount-fuse", str(host_dir), "/run"]
        try:
            proc = _run(cmd, check=False, timeout=30)
        except LabError as exc:
            report.leftovers.append(f"FUSE clean-up in {host_dir.name}: {exc}")
            return []
        if proc.returncode != 0:
            report.leftovers.append(f"FUSE clean-up in {host_dir.name}: {proc.stderr.strip()}")
        return proc.stdout.split()
