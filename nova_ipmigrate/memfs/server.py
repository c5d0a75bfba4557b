"""The memfs server: a mounted FUSE connection, its reader threads and pager.

Owns the lifecycle of one mount: mount, bdi tuning, serving ``/dev/fuse``
with several reader threads (one must always be free to answer the launder
WRITEs an invalidation triggers), and a shutdown that never leaves a hung
mount: the daemon's own handles are dropped while readers still serve, then
the mount goes, and fusectl's abort is the last resort.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova_ipmigrate.memfs import mount as mnt
from nova_ipmigrate.memfs import victim, watchdog
from nova_ipmigrate.memfs.pager import Pager, PagerConfig
from nova_ipmigrate.memfs.protocol import PAGE_SIZE, inval_entry
from nova_ipmigrate.memfs.ramfile import RamFile
from nova_ipmigrate.memfs.session import READ_BUFFER, FuseSession, ReaderContext, SessionConfig
from nova_ipmigrate.memfs.store import PageStore
from nova_ipmigrate.memfs.tree import FsError

LOG = logging.getLogger(__name__)
MIB = 2**20


@dataclass
class MemfsConfig:
    """Settings of one memfs instance (from the ``[memfs]`` option group)."""

    mountpoint: Path
    reader_threads: int = 2
    max_readahead_kb: int = 0
    default_resident_limit_mb: int = 0
    page_store_mb: int = 4096
    eviction_batch_pages: int = 256
    eviction_target_pct: int = 90
    pin_resident_pages: bool = True
    tune_bdi: bool = True
    shutdown_timeout: float = 10.0
    #: a child process that aborts the connection if this process dies
    watchdog: bool = True
    victim_policy: str = "recency"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_conf(cls, group: Any) -> MemfsConfig:
        """Build from the ``[memfs]`` group of an oslo.config object."""
        return cls(mountpoint=Path(group.mountpoint), reader_threads=group.reader_threads,
                   max_readahead_kb=group.max_readahead_kb,
                   default_resident_limit_mb=group.default_resident_limit_mb,
                   page_store_mb=group.page_store_mb,
                   eviction_batch_pages=group.eviction_batch_pages,
                   eviction_target_pct=group.eviction_target_pct,
                   pin_resident_pages=group.pin_resident_pages, tune_bdi=group.tune_bdi,
                   shutdown_timeout=group.shutdown_timeout, victim_policy=group.victim_policy)


class MemFS:
    """One mounted memfs. ``start()`` mounts and serves; ``stop()`` always cleans up."""

    def __init__(self, config: MemfsConfig) -> None:
        if config.reader_threads < 2:
            raise ValueError("memfs needs at least 2 reader threads (launders need a free one)")
        self.config = config
        #: the page-table algorithm of the [memfs] victim_policy plugin (checked here,
        #: at daemon start: an unknown name fails before anything is mounted)
        self.victim_algorithm = victim.algorithm(config.victim_policy)
        self.store = PageStore(config.page_store_mb * MIB // PAGE_SIZE)
        self.session = FuseSession(
            self.store,
            SessionConfig(max_readahead=config.max_readahead_kb * 1024,
                          default_resident_limit_pages=(config.default_resident_limit_mb * MIB
                                                        // PAGE_SIZE),
                          throttle_slots=config.reader_threads - 1,
                          victim_policy=self.victim_algorithm),
            own_tid=self._is_own_thread, on_pressure=self._wake_evictor)
        self.pager = Pager(PagerConfig(pin=config.pin_resident_pages,
                                       batch_pages=config.eviction_batch_pages,
                                       target_pct=config.eviction_target_pct),
                           self._ram_files, self._notify, str(config.mountpoint),
                           on_detached=self._detached)
        self.fd = -1
        self.conn = -1
        self.dev = 0
        self.bdi: dict[str, str] = {}
        self._readers: list[threading.Thread] = []
        self._stopping = False
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        mp = self.config.mountpoint
        mp.mkdir(parents=True, exist_ok=True)
        self.fd = mnt.mount_fuse(mp)
        try:
            for i in range(self.config.reader_threads):
                t = threading.Thread(target=self._reader, name=f"memfs-reader-{i}", daemon=True)
                t.start()
                self._readers.append(t)
            # The first request is INIT; stat() waits for it to be answered.
            st = os.stat(mp)
            self.dev = st.st_dev
            self.conn = os.minor(st.st_dev)
            if self.config.tune_bdi:
                self.bdi = mnt.tune_bdi(st.st_dev)
            mnt.ensure_fusectl()
            if self.config.watchdog:
                self._watchdog = watchdog.spawn(self.conn)
            self.pager.start()
        except BaseException:
            self.stop()
            raise
        self.started_at = time.monotonic()
        LOG.info("memfs mounted on %s (connection %d, bdi %s)", mp, self.conn, self.bdi)

    def stop(self) -> None:
        """Unmount and stop serving; safe to call twice and after a failed start."""
        if self._stopping:
            return
        self._stopping = True
        mp = self.config.mountpoint
        self.pager.stop()
        # Our own fds and mappings first, while readers answer FLUSH/RELEASE.
        for _path, ram in self._ram_files():
            try:
                ram.detach()
            except OSError as exc:
                LOG.warning("detaching a RAM file: %s", exc)
        if self.fd >= 0:
            users = sum(r.user_opens for _p, r in self._ram_files())
            if users:
                LOG.warning("unmounting %s while %d handle(s) are open: users will get "
                            "errors", mp, users)
            try:
                mnt.umount(mp, lazy=False)
            except OSError as exc:
                LOG.warning("umount %s: %s; detaching lazily and aborting", mp, exc)
                try:
                    mnt.umount(mp, lazy=True)
                except OSError as exc2:
                    LOG.warning("lazy umount %s: %s", mp, exc2)
                if self.conn >= 0:
                    mnt.abort_connection(self.conn)
            deadline = time.monotonic() + self.config.shutdown_timeout
            for t in self._readers:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in self._readers) and self.conn >= 0:
                mnt.abort_connection(self.conn)
                for t in self._readers:
                    t.join(2)
            os.close(self.fd)
            self.fd = -1
        self.store.close()
        if self._watchdog is not None:
            self._watchdog.kill()  # after the unmount: nothing left to abort
            self._watchdog.wait()
        LOG.info("memfs on %s stopped", mp)

    def __enter__(self) -> MemFS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------

    def _reader(self) -> None:
        ctx = ReaderContext()
        buf = bytearray(READ_BUFFER + 4096)
        view = memoryview(buf)
        while True:
            try:
                n = os.readv(self.fd, [buf])
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted before we read it
                if exc.errno != errno.ENODEV:  # ENODEV: unmounted
                    LOG.error("reading /dev/fuse: %s", exc)
                return
            reply = self.session.handle(view[:n], ctx)
            if reply is None:
                continue
            try:
                os.writev(self.fd, reply)
            except OSError as exc:
                # ENOENT: the kernel gave up on the request (interrupted/aborted).
                if exc.errno not in (errno.ENOENT,):
                    LOG.warning("writing a FUSE reply: %s", exc)
                    if exc.errno == errno.ENODEV:
                        return

    def _detached(self, ram: RamFile) -> None:
        tree = self.session.tree
        with tree.lock:
            node = tree.nodes.get(ram.nodeid)
            if node is not None:
                tree.maybe_drop(node)

    def _wake_evictor(self) -> None:
        self.pager.wake()

    def _notify(self, message: bytes) -> None:
        os.write(self.fd, message)

    def _is_own_thread(self, tid: int) -> bool:
        return os.path.exists(f"/proc/self/task/{tid}")

    def _ram_files(self) -> list[tuple[str | None, RamFile]]:
        return [(p, n.ram) for p, n in self.session.ram_files() if n.ram is not None]

    # -- management (agent / control socket) --------------------------------------

    def ram_files(self) -> list[tuple[str, RamFile]]:
        """(path, RAM file) of every RAM file that has a name."""
        return [(p, ram) for p, ram in self._ram_files() if p is not None]

    def find(self, path: str) -> RamFile:
        rel = path.strip("/")
        for p, ram in self._ram_files():
            if p == rel:
                return ram
        raise FsError(errno.ENOENT, f"no RAM file {path!r} on memfs")

    def create_ram_file(self, path: str, size: int, resident_limit_bytes: int = 0) -> RamFile:
        """Prepare a RAM file (directories included) before QEMU opens it."""
        if size <= 0 or size % PAGE_SIZE:
            raise FsError(errno.EINVAL, f"size must be a positive multiple of {PAGE_SIZE}")
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise FsError(errno.EINVAL, "empty path")
        tree = self.session.tree
        with tree.lock:
            node = tree.root
            for name in parts[:-1]:
                node = node.children.get(name) or tree.add(node, name, 0o40700, 0, 0)
                if not node.is_dir:
                    raise FsError(errno.ENOTDIR, f"{name} is not a directory")
            f = tree.add(node, parts[-1], 0o100600, 0, 0)
            f.pinned = True
            f.ram = RamFile(f.nodeid, self.store)
            f.ram.victim_policy = self.victim_algorithm
            f.ram.resize(size)
            f.ram.set_resident_limit(resident_limit_bytes // PAGE_SIZE)
            return f.ram

    def list_dir(self, path: str) -> list[str]:
        """Names in directory ``path`` (empty if there is none)."""
        tree = self.session.tree
        with tree.lock:
            node = tree.root
            for name in [p for p in path.strip("/").split("/") if p]:
                child = node.children.get(name)
                if child is None or not child.is_dir:
                    return []
                node = child
            return sorted(node.children)

    def remove_ram_file(self, path: str) -> bool:
        """The agent ends a RAM file it prepared: unpinned and unlinked; its pages are
        freed once QEMU and the kernel let go of it. False: there was none."""
        parts = [p for p in path.strip("/").split("/") if p]
        tree = self.session.tree
        with tree.lock:
            node = tree.root
            for name in parts[:-1]:
                child = node.children.get(name)
                if child is None:
                    return False
                node = child
            f = node.children.get(parts[-1]) if parts else None
            if f is None or f.ram is None:
                return False
            f.pinned = False
            tree.detach(node, parts[-1])
            parent = node.nodeid
        try:  # the kernel's dentry goes too: then it forgets the inode, and we free it
            self._notify(inval_entry(parent, parts[-1]))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EBADF, errno.ENODEV):
                LOG.warning("invalidating %s: %s", path, exc)
        self.pager.wake()
        return True

    def set_resident_limit(self, path: str, limit_bytes: int) -> None:
        self.find(path).set_resident_limit(limit_bytes // PAGE_SIZE)
        self.pager.wake()

    def stats(self) -> dict[str, object]:
        files = {p or f"<unlinked:{r.nodeid}>": r.stats() for p, r in self._ram_files()}
        return {
            "mountpoint": str(self.config.mountpoint),
            "uptime_s": time.monotonic() - self.started_at if self.started_at else 0.0,
            "connection": self.conn,
            "bdi": self.bdi,
            "store": {"capacity_pages": self.store.capacity, "used_pages": self.store.used},
            "read_latency": self.session.read_latency.summary(),
            "read_latency_hist": list(self.session.read_latency.counts),
            "notify_latency": self.pager.notify_latency.summary(),
            "notify_errors": self.pager.notify_errors,
            "protocol_errors": self.session.errors,
            "throttled_page_ins": self.session.throttled,
            "redirected_page_ins": self.session.redirected,
            "files": files,
        }
