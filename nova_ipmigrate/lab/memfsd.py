"""Running an ``ipmigrate-memfs`` daemon as a child process of the lab.

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

    def __init__(self, workdir: Path, options: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.mountpoint = workdir / "memfs"
        self.socket = workdir / "memfs.sock"
        self.log = workdir / "memfs.log"
        self.options = {"mountpoint": str(self.mountpoint),
                        "control_socket": str(self.socket), **(options or {})}
        self._proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        lines = ["[DEFAULT]", f"state_path = {self.workdir}", f"log_file = {self.log}",
                 "[memfs]"]
        lines += [f"{k} = {v}" for k, v in self.options.items()]
        path = self.workdir / "memfs.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        force_unmount(self.mountpoint)  # leftovers of a crashed earlier run
        conf = self.write_config()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "nova_ipmigrate.cmd.memfs", "--config-file", str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "memfs.stderr", "wb"), start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise MemfsDaemonError(
                    f"ipmigrate-memfs exited with {self._proc.returncode}: "
                    f"{self._tail()}")
            try:
                self.call("stats", timeout=2)
                return
            except control.ControlError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise MemfsDaemonError(f"ipmigrate-memfs not ready in {timeout}s: {self._tail()}")
            time.sleep(0.1)

    def _tail(self) -> str:
        out = []
        for name in ("memfs.stderr", "memfs.log"):
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
        force_unmount(self.mountpoint)

    def __enter__(self) -> MemfsDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
