"""libvirtd in a lab host, and the lab guest as a libvirt domain.

Each lab host can run its own ``libvirtd`` (Debian's libvirt-daemon-system; its
service is never used): the host's mount namespace gets its own
``/etc/libvirt``, ``/var/lib/libvirt``, ``/var/log/libvirt`` and
``/var/cache/libvirt`` (bind mounts of ``<host state dir>/libvirt/*``, seen by that
host only), ``/run/libvirt`` is in the host's private ``/run``, and every
libvirtd has its own ``host_uuid`` (libvirt refuses a migration to a host with
its own UUID). ``qemu.conf`` puts file-backed guest RAM on the host's memfs
(``memory_backing_dir`` = the agent's mount point), so a domain named ``oracle``
that is the daemon's first gets ``<memfs>/libvirt/qemu/1-oracle/pc.ram``, the
RAM file the lab creates (see ``singlehost.RAM_PATH``).

:class:`LibvirtGuest` has the interface of :class:`~nova_ipmigrate.qemu.runner.
QemuProcess` that the lab's runs use (start, alive, ram_mapping_rss_kb, wait,
stop), for a transient domain with ``<memoryBacking><source type='file'/>
<access mode='shared'/>`` (QEMU's ``memory-backend-file,share=on``), the lab's
nohuge shim preloaded through ``<qemu:env>`` and an extra QMP monitor through
``<qemu:commandline>`` (libvirt keeps its own).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import time
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from nova_ipmigrate.hooks.libvirt_qemu import HOOK_NAME
from nova_ipmigrate.lab.hosts import LabHost
from nova_ipmigrate.qemu.memcg import MemoryCgroup
from nova_ipmigrate.qemu.runner import parse_smaps_rss_kb

LIBVIRTD = "/usr/sbin/libvirtd"
URI = "qemu:///system"
#: the host's libvirt directories and where their private copies live
BIND_DIRS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
             "cache": "/var/cache/libvirt"}


class LibvirtError(RuntimeError):
    pass


def available() -> bool:
    return Path(LIBVIRTD).exists()


def host_uuid(hostname: str) -> str:
    """A stable, distinct host UUID per lab host (by its host name)."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{hostname}.ipmigrate-lab"))


class LabLibvirtd:
    """One libvirtd inside a lab host."""

    def __init__(self, host: LabHost, memory_backing_dir: Path,
                 log_filters: str = "3:qemu 3:util 3:rpc", hook: str | None = None) -> None:
        self.host = host
        self.dir = host.state_dir / "libvirt"
        self.memory_backing_dir = Path(memory_backing_dir)
        self.log_filters = log_filters
        #: the qemu hook script (``hooks.libvirt_qemu.hook_script``), installed as
        #: ``/etc/libvirt/hooks/qemu.d/50-nova-ipmigrate``
        self.hook = hook
        self.log = self.dir / "log" / "libvirtd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def libvirtd_conf(self) -> str:
        return "\n".join([
            "# written by nova_ipmigrate.lab.libvirt",
            f'host_uuid = "{host_uuid(self.host.hostname)}"',
            'unix_sock_group = "root"',
            'unix_sock_rw_perms = "0700"',
            # peer-to-peer migrations between lab hosts: plain TCP on the lab's private
            # addresses, no authentication (the lab only; use TLS anywhere else)
            "listen_tls = 0",
            "listen_tcp = 1",
            'auth_tcp = "none"',
            f'listen_addr = "{self.host.address}"',
            f'log_outputs = "1:file:{self.log}"',
            f'log_filters = "{self.log_filters}"',
            "",
        ])

    def qemu_conf(self) -> str:
        return "\n".join([
            "# written by nova_ipmigrate.lab.libvirt",
            f'memory_backing_dir = "{self.memory_backing_dir}"',
            # the lab has no SELinux/AppArmor profiles, cgroups of its own (memcg is
            # the lab's), no virtlogd and no per-domain mount namespaces (the RAM file
            # must be the host's memfs mount, as QEMU opens it)
            'security_driver = "none"',
            "cgroup_controllers = [ ]",
            "namespaces = [ ]",
            'user = "root"',
            'group = "root"',
            "dynamic_ownership = 0",
            'stdio_handler = "file"',
            "",
        ])

    def write_config(self) -> None:
        for sub in BIND_DIRS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        (etc / "qemu").mkdir(exist_ok=True)
        (etc / "hooks").mkdir(exist_ok=True)
        (etc / "libvirtd.conf").write_text(self.libvirtd_conf())
        (etc / "qemu.conf").write_text(self.qemu_conf())
        (etc / "libvirt.conf").write_text(f'uri_default = "{URI}"\n')
        hooks = etc / "hooks" / "qemu.d"
        hooks.mkdir(parents=True, exist_ok=True)
        script = hooks / HOOK_NAME
        if self.hook is not None:
            script.write_text(self.hook)
            script.chmod(0o755)
        else:
            script.unlink(missing_ok=True)

    def inner_script(self) -> str:
        """What runs inside the host: the private directories, then libvirtd."""
        lines = ["set -e"]
        for sub, target in BIND_DIRS.items():
            lines.append(f"mountpoint -q {target} || mount --bind {self.dir / sub} {target}")
        lines += ["mkdir -p /run/libvirt", f"exec {LIBVIRTD} --listen"]
        return "\n".join(lines)

    def command(self, argv: Sequence[str]) -> list[str]:
        return self.host.enter_command(list(argv), cwd=self.dir)

    def virsh(self, *args: str, timeout: float = 60.0,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(self.command(["virsh", "-q", "-c", URI, *args]),
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise LibvirtError(f"virsh {' '.join(args)} on {self.host.name}: "
                               f"{out.stderr.strip() or out.stdout.strip()}")
        return out

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def reported_host_uuid(self) -> str | None:
        """The host UUID the running libvirtd reports (``virsh capabilities``)."""
        caps = self.virsh("capabilities", timeout=30).stdout
        m = re.search(r"<host>\s*<uuid>([^<]+)</uuid>", caps)
        return m.group(1) if m else None

    def start(self, timeout: float = 60.0) -> None:
        """Start libvirtd; returns when it answers. On failure nothing is left running."""
        if not available():
            raise LibvirtError(f"{LIBVIRTD} is not installed (bindep.txt: "
                               f"libvirt-daemon-system)")
        self.write_config()
        out = open(self.dir / "libvirtd.out", "ab")
        try:
            self._proc = subprocess.Popen(self.command(["sh", "-c", self.inner_script()]),
                                          stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise LibvirtError(f"libvirtd on {self.host.name} exited with "
                                   f"{self._proc.returncode}: {self.tail()}")
            if self.virsh("version", check=False, timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise LibvirtError(f"libvirtd on {self.host.name} does not answer: "
                                   f"{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        """Destroy every domain, then end libvirtd (SIGTERM, then SIGKILL); a QEMU
        that is still there after that (a killed libvirtd's) is killed."""
        proc, self._proc = self._proc, None
        if proc is None:
            self.kill_domains()
            return
        if proc.poll() is None:
            with contextlib.suppress(LibvirtError, subprocess.TimeoutExpired):
                for name in self.virsh("list", "--name", timeout=10).stdout.split():
                    self.virsh("destroy", name, check=False, timeout=20)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        self.kill_domains()

    def wait_no_domains(self, timeout: float = 60.0) -> None:
        """Until libvirtd lists no domain: a restarted libvirtd removes those it finds
        dead in its state directory in the background, and refuses an incoming domain
        of the same name meanwhile ("already being removed")."""
        deadline = time.monotonic() + timeout
        while self.virsh("list", "--all", "--name", timeout=20).stdout.split():
            if time.monotonic() > deadline:
                listing = self.virsh("list", "--all", check=False, timeout=20)
                raise LibvirtError(f"libvirtd on {self.host.name} still lists domains "
                                   f"after {timeout:.0f}s: {listing.stdout.strip()}\n"
                                   f"{self.tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL libvirtd (a failure test); its QEMUs go on (see kill_domains)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)   # sh exec'd libvirtd: this is libvirtd
            proc.wait(10)

    def kill_domains(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every QEMU this host's libvirt started: those of its pid files in
        its /run, and any QEMU whose command line names this host's memory backing
        directory (one a killed libvirtd forked before it wrote the pid file)."""
        killed: list[int] = []
        for _ in range(2):   # again: a QEMU still exec'ing on the first pass
            for pid in sorted(self._qemu_pids() - set(killed)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.3)
        deadline = time.monotonic() + timeout
        while any(_running(p) for p in killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        return killed

    def _qemu_pids(self) -> set[int]:
        pids: set[int] = set()
        for pid_file in (self.host.run_dir / "libvirt" / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(int(pid_file.read_text().strip()))
        mark = str(self.memory_backing_dir).encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in proc.joinpath("cmdline").read_bytes():
                        pids.add(int(proc.name))
        out = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                # driver.pid in the pid directory is libvirtd's own lock file
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                if _running(pid) and b"qemu-system" in cmd:
                    out.add(pid)
        return out

    def tail(self, chars: int = 3000) -> str:
        out = []
        for path in (self.dir / "libvirtd.out", self.log):
            with contextlib.suppress(OSError):
                out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


def start_all(libvirtds: Sequence[LabLibvirtd]) -> None:
    """Start several hosts' libvirtd at once; on a failure none is left running."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(libvirtds))) as pool:
        results = list(pool.map(_start_one, libvirtds))
    failed = [exc for exc in results if exc is not None]
    if failed:
        stop_all(libvirtds)
        raise failed[0]


def stop_all(libvirtds: Sequence[LabLibvirtd]) -> None:
    """Stop several hosts' libvirtd at once (each destroys its domains first)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(libvirtds))) as pool:
        list(pool.map(lambda d: d.stop(), libvirtds))


def _start_one(d: LabLibvirtd) -> BaseException | None:
    try:
        d.start()
    except Exception as exc:  # noqa: BLE001 - raised by start_all, after the cleanup
        return exc
    return None


def domain_xml(name: str, ram_mb: int, kernel: Path, initrd: Path, cmdline: str,
               serial_log: Path, qmp_socket: Path, emulator: str = "/usr/bin/qemu-system-x86_64",
               accel: str = "tcg", cpu: str = "qemu64", vcpus: int = 1,
               preload: str | None = None, domain_uuid: str | None = None,
               on_reboot: str = "destroy", shared_file: bool = True) -> str:
    """A transient lab domain: direct kernel boot, RAM as a shared file, serial to a
    file (appended to: a migrated domain's QEMU goes on writing it), an extra QMP
    monitor; destroyed when the guest reboots, unless ``on_reboot`` is "restart"."""
    if on_reboot not in ("destroy", "restart"):
        raise ValueError(f"on_reboot must be destroy or restart, not {on_reboot!r}")
    # shared_file=False: ordinary anonymous guest RAM (a plain VM, the B4 baseline)
    backing = ("  <memoryBacking>\n    <source type='file'/>\n    <access mode='shared'/>\n"
               "  </memoryBacking>\n") if shared_file else ""
    dtype = "kvm" if accel.startswith("kvm") else "qemu"
    env = (f"    <qemu:env name='LD_PRELOAD' value={quoteattr(preload)}/>\n"
           if preload else "")
    return f"""<domain type='{dtype}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(name)}</name>
  <uuid>{domain_uuid or uuidlib.uuid4()}</uuid>
  <memory unit='MiB'>{ram_mb}</memory>
{backing}  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(kernel))}</kernel>
    <initrd>{escape(str(initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>{cpu}</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>{on_reboot}</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(emulator)}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={quoteattr(str(serial_log))} append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-qmp'/>
    <qemu:arg value={quoteattr(f"unix:{qmp_socket},server=on,wait=off")}/>
{env}  </qemu:commandline>
</domain>
"""


class LibvirtGuest:
    """The lab guest as a transient libvirt domain (``QemuProcess``'s interface)."""

    def __init__(self, libvirtd: LabLibvirtd, xml: str, name: str, ram_path: Path,
                 qmp_socket: Path, memcg: MemoryCgroup | None = None,
                 qmp_inside: Path | None = None) -> None:
        self.libvirtd = libvirtd
        self.xml = xml
        self.name = name
        self.ram_path = ram_path
        self.qmp_socket = qmp_socket
        #: the extra monitor's path inside a host (in its private /run), if it is there
        self.qmp_inside = qmp_inside
        self.memcg = memcg
        self._pid: int | None = None
        #: a libvirtd the domain is migrating to (see :meth:`expect_move`)
        self._next: LabLibvirtd | None = None
        #: the hosts the domain ran on, in order
        self.hosts = [libvirtd.host.name]

    def pid_file_of(self, libvirtd: LabLibvirtd) -> Path:
        """QEMU's pid file on ``libvirtd``'s host, in its /run as seen from outside."""
        return libvirtd.host.run_dir / "libvirt" / "qemu" / f"{self.name}.pid"

    @property
    def pid_file(self) -> Path:
        return self.pid_file_of(self.libvirtd)

    def qmp_socket_on(self, libvirtd: LabLibvirtd) -> Path:
        """The extra QMP monitor of the domain's QEMU on ``libvirtd``'s host."""
        if self.qmp_inside is None:
            return self.qmp_socket
        return libvirtd.host.run_dir / self.qmp_inside.relative_to("/run")

    def expect_move(self, libvirtd: LabLibvirtd | None) -> None:
        """The domain may migrate to ``libvirtd``: once the QEMU here is gone and one
        runs there, that one is the guest (the destination starts before the source
        stops, so one of them always runs)."""
        self._next = libvirtd

    def _switch(self) -> bool:
        nxt = self._next
        if nxt is None:
            return False
        try:
            pid = int(self.pid_file_of(nxt).read_text().strip())
        except (OSError, ValueError):
            return False
        if not _running(pid):
            return False
        self.libvirtd, self._pid, self._next = nxt, pid, None
        self.hosts.append(nxt.host.name)
        if self.memcg is not None:
            with contextlib.suppress(OSError):
                Path(self.memcg.procs_file).write_text(f"{pid}\n")
        return True

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise LibvirtError(f"domain {self.name} is not running")
        return self._pid

    def start(self, wait_socket: float = 30.0) -> None:
        path = self.libvirtd.dir / f"{self.name}.xml"
        path.write_text(self.xml)
        self.qmp_socket.unlink(missing_ok=True)
        self.libvirtd.virsh("create", str(path), timeout=120)
        deadline = time.monotonic() + wait_socket
        while True:
            with contextlib.suppress(OSError, ValueError):
                self._pid = int(self.pid_file.read_text().strip())
            if self._pid is not None and self.qmp_socket.exists():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise LibvirtError(f"domain {self.name}: no QEMU pid or QMP socket after "
                                   f"{wait_socket:.0f}s: {self.libvirtd.tail()}")
            time.sleep(0.1)
        if self.memcg is not None:
            # from here on QEMU's new pages are charged to the lab's cgroup
            Path(self.memcg.procs_file).write_text(f"{self._pid}\n")

    def cmdline(self) -> list[str]:
        """QEMU's command line, as libvirt generated it."""
        return Path(f"/proc/{self.pid}/cmdline").read_bytes().decode().split("\0")[:-1]

    def alive(self) -> bool:
        if self._pid is None:
            return False
        return _running(self._pid) or self._switch()

    def ram_mapping_rss_kb(self) -> int:
        try:
            smaps = Path(f"/proc/{self.pid}/smaps").read_text()
        except OSError:
            return 0
        return parse_smaps_rss_kb(smaps, self.ram_path)

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.alive():
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.1)
        return 0

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.libvirtd.virsh("destroy", self.name, check=False, timeout=30)
        return self.wait(timeout)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
