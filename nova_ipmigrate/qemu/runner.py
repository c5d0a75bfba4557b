"""Running one QEMU on this host, with guest RAM in a shared file.

This module owns the QEMU command line for file-backed, shared guest RAM
(``memory-backend-file,share=on``, which memfs and ``x-ignore-shared``
migration rely on), starting QEMU with the nohuge shim preloaded and inside
a memory cgroup, observing it (QMP, RSS of the RAM mapping) and always
stopping and reaping it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from nova_ipmigrate.qemu.memcg import MemoryCgroup
from nova_ipmigrate.qemu.qmp import QMPClient, QMPError
from nova_ipmigrate.qemu.shim import preload_env

__all__ = [
    "QemuConfig",
    "QemuError",
    "QemuProcess",
    "build_command",
    "build_env",
    "parse_smaps_rss_kb",
]


class QemuError(RuntimeError):
    """QEMU failed to start or exited unexpectedly (message has its log tail)."""


@dataclasses.dataclass
class QemuConfig:
    """Everything that determines one QEMU process.

    ``ram_path`` is the memory-backend-file ``mem-path``: a file path (on
    memfs, tmpfs, ...), not a directory, so the host knows exactly which
    file is the guest's RAM.
    """

    ram_mb: int
    ram_path: Path
    kernel: Path
    initrd: Path
    append: str
    serial_log: Path
    qmp_socket: Path
    accel: str = "tcg"
    cpu: str = "qemu64"
    smp: int = 1
    block_thp_readahead: bool = True
    shim_path: Path | None = None
    memcg: MemoryCgroup | None = None
    extra_args: list[str] = dataclasses.field(default_factory=list)
    qemu_binary: str = "qemu-system-x86_64"
    machine: str = "pc"
    stderr_log: Path | None = None
    #: command QEMU runs under, e.g. nsenter into a lab host's namespaces
    wrapper: list[str] = dataclasses.field(default_factory=list)

    @property
    def stderr_path(self) -> Path:
        """QEMU's stdout+stderr log (default: next to the serial log)."""
        if self.stderr_log is not None:
            return self.stderr_log
        return self.serial_log.with_name(self.serial_log.name + ".qemu.log")


def build_command(config: QemuConfig) -> list[str]:
    """The QEMU argv for ``config``."""
    for name, value in (("ram_path", config.ram_path), ("serial_log", config.serial_log),
                        ("qmp_socket", config.qmp_socket)):
        if "," in str(value):
            # QEMU option syntax would need ",," escaping; refuse instead.
            raise ValueError(f"{name} must not contain ',': {value}")
    return [
        *config.wrapper,
        config.qemu_binary,
        "-machine", f"{config.machine},memory-backend=ram0",
        "-accel", config.accel,
        "-cpu", config.cpu,
        "-m", str(config.ram_mb),
        "-smp", str(config.smp),
        "-nodefaults",
        "-vga", "none",
        "-display", "none",
        "-object", (f"memory-backend-file,id=ram0,size={config.ram_mb}M,"
                    f"mem-path={config.ram_path},share=on"),
        "-kernel", str(config.kernel),
        "-initrd", str(config.initrd),
        "-append", config.append,
        "-serial", f"file:{config.serial_log}",
        "-qmp", f"unix:{config.qmp_socket},server=on,wait=off",
        # A guest reboot (panic=-1 in the guest) ends QEMU, so failures surface.
        "-no-reboot",
        *config.extra_args,
    ]


def build_env(config: QemuConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """QEMU's environment: ``base`` (default os.environ) plus the shim preload."""
    env = dict(os.environ if base is None else base)
    if config.block_thp_readahead:
        if config.shim_path is None:
            raise ValueError("block_thp_readahead needs shim_path "
                             "(nova_ipmigrate.qemu.shim.ensure_nohuge_shim)")
        env = preload_env(config.shim_path, env)
    return env


def parse_smaps_rss_kb(smaps_text: str, path: Path | str) -> int:
    """Sum the Rss (kB) of the smaps entries mapping file ``path``."""
    want = str(path)
    total = 0
    in_target = False
    for line in smaps_text.splitlines():
        fields = line.split(maxsplit=5)
        # Mapping header: "start-end perms offset dev inode [pathname]".
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            name = fields[5] if len(fields) == 6 else ""
            name = name.removesuffix(" (deleted)")
            in_target = name == want
        elif in_target and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def _log_tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "(no QEMU log)"


class QemuProcess:
    """One QEMU process; a context manager that always stops it."""

    def __init__(self, config: QemuConfig) -> None:
        self.config = config
        self._popen: subprocess.Popen[bytes] | None = None
        self._qmp: QMPClient | None = None
        self._log: IO[bytes] | None = None
        self._stopping = False
        self.started_at: float | None = None

    # ---------------------------------------------------------- start

    def _preexec(self) -> Callable[[], None] | None:
        memcg = self.config.memcg
        if memcg is None:
            return None
        procs = os.fsencode(memcg.procs_file)

        def join_cgroup() -> None:
            # Runs in the child between fork and exec, before QEMU maps
            # guest RAM, so every page is charged to the cgroup.  Only raw
            # syscalls here: the parent may have other threads.
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"%d\n" % os.getpid())
            finally:
                os.close(fd)

        return join_cgroup

    def start(self, wait_socket: float = 10.0) -> None:
        """Start QEMU; wait until its QMP socket exists (or it died)."""
        if self._popen is not None:
            raise QemuError("QEMU already started")
        cfg = self.config
        cmd = build_command(cfg)
        env = build_env(cfg)
        cfg.qmp_socket.unlink(missing_ok=True)
        cfg.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(cfg.stderr_path, "wb")
        try:
            self._popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                           stderr=subprocess.STDOUT, env=env,
                                           preexec_fn=self._preexec(), close_fds=True)
        except OSError as exc:
            self._log.close()
            raise QemuError(f"cannot run {cfg.qemu_binary}: {exc} "
                            "(apt-get install qemu-system-x86)") from exc
        self.started_at = time.monotonic()
        deadline = time.monotonic() + wait_socket
        while not cfg.qmp_socket.exists():
            self.check()
            if time.monotonic() >= deadline:
                self.stop()
                raise QemuError(f"QEMU did not create {cfg.qmp_socket} within {wait_socket}s:\n"
                                f"{self.log_tail()}")
            time.sleep(0.02)

    # ---------------------------------------------------------- state

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise QemuError("QEMU not started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def log_tail(self, max_bytes: int = 4000) -> str:
        return _log_tail(self.config.stderr_path, max_bytes)

    def check(self) -> None:
        """Raise QemuError if QEMU exited (unless we are stopping it)."""
        if self._popen is None:
            raise QemuError("QEMU not started")
        rc = self._popen.poll()
        if rc is not None and not self._stopping:
            raise QemuError(f"QEMU exited with status {rc}:\n{self.log_tail()}")

    def qmp(self, timeout: float = 10.0) -> QMPClient:
        """The QMP client, connected on first use."""
        if self._qmp is None or not self._qmp.connected:
            self.check()
            client = QMPClient(self.config.qmp_socket)
            try:
                client.connect(timeout=timeout)
            except QMPError as exc:
                self.check()  # a dead QEMU is the better explanation
                raise QemuError(f"QMP connection failed: {exc}") from exc
            self._qmp = client
        return self._qmp

    def ram_mapping_rss_kb(self) -> int:
        """Resident kB of the guest-RAM file mapping in QEMU (0 if unmapped)."""
        if self._popen is None:
            return 0
        try:
            text = Path(f"/proc/{self._popen.pid}/smaps").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return 0
        return parse_smaps_rss_kb(text, os.path.realpath(self.config.ram_path))

    # ---------------------------------------------------------- stop

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for QEMU to exit on its own; its status, or None on timeout."""
        if self._popen is None:
            raise QemuError("QEMU not started")
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """QMP quit, then SIGTERM, then SIGKILL; always reaps. Returns the status."""
        self._stopping = True
        popen = self._popen
        try:
            if popen is None:
                return None
            if popen.poll() is None:
                try:
                    client = self._qmp
                    if client is None or not client.connected:
                        client = QMPClient(self.config.qmp_socket, timeout=2.0).connect(2.0)
                        self._qmp = client
                    client.execute("quit", timeout=2.0)
                except QMPError:
                    pass  # EOF before the reply is normal for quit
                for sig, grace in ((None, timeout / 2), (signal.SIGTERM, timeout / 2),
                                   (signal.SIGKILL, None)):
                    if sig is not None and popen.poll() is None:
                        popen.send_signal(sig)
                    try:
                        popen.wait(grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            return popen.wait()
        finally:
            if self._qmp is not None:
                self._qmp.close()
            if self._log is not None:
                self._log.close()

    def __enter__(self) -> QemuProcess:
        if self._popen is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
