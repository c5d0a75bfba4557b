"""Running an ``ipmigrate-memfs`` or ``ipmigrate-agent`` daemon as a child of the lab.

Owns the daemon's config file, its start (ready when the mount answers and
the control socket accepts), and a stop that cannot leave a hung mount:
control-socket shutdown, then SIGTERM, then SIGKILL, and then a lazy unmount
and a fusectl abort if the mount is still there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nova_ipmigrate.memfs import control
from nova_ipmigrate.memfs import mount as mnt


class MemfsDaemonError(RuntimeError):
    pass


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


def force_unmount(path: Path) -> None:
    """Last resort for a mount whose daemon is gone or hung."""
    if not _is_mounted(path):
        return
    try:
        conn = mnt.connection_id(path)
    except OSError:
        conn = -1
    if conn >= 0:
        mnt.abort_connection(conn)
    try:
        mnt.umount(path, lazy=True)
    except OSError:
        pass


class MemfsDaemon:
    """An ``ipmigrate-memfs`` process serving ``mountpoint``."""

    module = "nova_ipmigrate.cmd.memfs"
    name = "memfs"

    def __init__(self, workdir: Path, options: dict[str, Any] | None = None,
                 prefix: list[str] | None = None) -> None:
        self.workdir = workdir
        self.mountpoint = workdir / "memfs"
        self.socket = workdir / f"{self.name}.sock"
        self.log = workdir / f"{self.name}.log"
        #: command prefix, e.g. to run inside a lab host's namespaces
        self.prefix = prefix or []
        self.options = {"mountpoint": str(self.mountpoint),
                        "control_socket": str(self.socket), **(options or {})}
        #: more [DEFAULT] options (e.g. transport_url)
        self.default_options: dict[str, Any] = {}
        #: more sections (e.g. oslo_messaging_rabbit), added to :meth:`sections`
        self.extra_sections: dict[str, dict[str, Any]] = {}
        self._proc: subprocess.Popen[bytes] | None = None

    def sections(self) -> dict[str, dict[str, Any]]:
        return {"memfs": self.options}

    def write_config(self) -> Path:
        lines = ["[DEFAULT]", f"state_path = {self.workdir}", f"log_file = {self.log}"]
        lines += [f"{k} = {v}" for k, v in self.default_options.items()]
        for section, opts in {**self.sections(), **self.extra_sections}.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in opts.items()]
        path = self.workdir / f"{self.name}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.force_unmount()  # leftovers of a crashed earlier run (or a killed daemon)
        conf = self.write_config()
        self._proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", self.module, "--config-file", str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.name}.stderr", "wb"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise MemfsDaemonError(
                    f"ipmigrate-{self.name} exited with {self._proc.returncode}: "
                    f"{self._tail()}")
            try:
                self.call("stats", timeout=2)
                return
            except control.ControlError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise MemfsDaemonError(
                    f"ipmigrate-{self.name} not ready in {timeout}s: {self._tail()}")
            time.sleep(0.1)

    def force_unmount(self) -> None:
        """:func:`force_unmount` of the mount point, in the daemon's mount namespace."""
        force_unmount(self.mountpoint)
        if self.prefix:  # a lab host's mount is seen inside its namespace only
            subprocess.run([*self.prefix, sys.executable, "-c",
                            "import sys; from pathlib import Path; "
                            "from nova_ipmigrate.lab.memfsd import force_unmount; "
                            "force_unmount(Path(sys.argv[1]))", str(self.mountpoint)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                           check=False)

    def _tail(self) -> str:
        out = []
        for name in (f"{self.name}.stderr", f"{self.name}.log"):
            try:
                out.append((self.workdir / name).read_text()[-2000:])
            except OSError:
                pass
        return "\n".join(out)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise MemfsDaemonError("not started")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        return control.call(self.socket, op, timeout=timeout, **args)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("stats")["stats"]
        return stats

    def stop(self, timeout: float = 20.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self.call("shutdown", timeout=5)
            except control.ControlError:
                pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and proc.poll() is None:
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout / 2 if sig is None else 5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.force_unmount()

    def __enter__(self) -> MemfsDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentDaemon(MemfsDaemon):
    """An ``ipmigrate-agent``: memfs, sub-host store and fabric endpoint of one host."""

    module = "nova_ipmigrate.cmd.agent"
    name = "agent"

    def __init__(self, workdir: Path, host: str, key_file: Path, fabric_port: int,
                 fabric_address: str = "127.0.0.1", memfs: dict[str, Any] | None = None,
                 agent: dict[str, Any] | None = None,
                 prefix: list[str] | None = None,
                 defaults: dict[str, Any] | None = None) -> None:
        super().__init__(workdir, memfs, prefix)
        self.default_options.update(defaults or {})
        self.options.pop("control_socket")
        self.host = host
        self.address = fabric_address
        self.fabric_port = fabric_port
        self.agent_options = {"host": host, "control_socket": str(self.socket), **(agent or {})}
        self.fabric_options = {"listen_address": fabric_address, "port": fabric_port,
                               "key_file": str(key_file)}

    def sections(self) -> dict[str, dict[str, Any]]:
        return {"memfs": self.options, "agent": self.agent_options,
                "fabric": self.fabric_options}

    def sub_host_entry(self) -> dict[str, Any]:
        return {"name": self.host, "address": self.address, "port": self.fabric_port}
