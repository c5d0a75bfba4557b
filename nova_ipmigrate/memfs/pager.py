"""Paging I/O of memfs: pinning resident pages and evicting cold ones.

Two threads per mount. The pinner maps freshly paged-in pages into the
daemon's lock-on-fault mapping, so memory-cgroup reclaim cannot drop the only
copy, and then lets the page table release the store copy. The evictor keeps
every RAM file under its resident limit with the window sequence of the
findings: open a window, snapshot pinned pages through the mount, send
``FUSE_NOTIFY_INVAL_INODE`` per run (the kernel launders dirty pages back as
WRITEs to the reader threads), close the window. No page-table lock is held
across any system call that can need a reader thread.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nova_ipmigrate.memfs import syscalls
from nova_ipmigrate.memfs.metrics import LatencyHistogram
from nova_ipmigrate.memfs.pages import contiguous_runs
from nova_ipmigrate.memfs.protocol import PAGE_SIZE, inval_inode
from nova_ipmigrate.memfs.ramfile import RamFile

LOG = logging.getLogger(__name__)


@dataclass
class PagerConfig:
    pin: bool = True
    batch_pages: int = 256
    target_pct: int = 90


class Pager:
    """Pinner and evictor threads over the RAM files ``files()`` returns."""

    def __init__(self, config: PagerConfig, files: Callable[[], list[tuple[str | None, RamFile]]],
                 notify: Callable[[bytes], None], root: str,
                 on_detached: Callable[[RamFile], None] = lambda ram: None) -> None:
        self.config = config
        self._files = files
        self._notify = notify
        self._root = root
        self._on_detached = on_detached
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.notify_latency = LatencyHistogram()
        self.notify_errors = 0
        self._snap = memoryview(bytearray(config.batch_pages * PAGE_SIZE))
        self._wake = threading.Event()
        self._attach_lock = threading.Lock()

    def start(self) -> None:
        for name, fn in (("memfs-pinner", self._pin_loop), ("memfs-evictor", self._evict_loop),
                         ("memfs-pusher", self._push_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- attaching -----------------------------------------------------------

    def _active(self) -> list[RamFile]:
        """RAM files in use by a guest; attach the daemon's handles on first sight."""
        out: list[RamFile] = []
        with self._attach_lock:
            return self._active_locked(out)

    def _active_locked(self, out: list[RamFile]) -> list[RamFile]:
        for path, ram in self._files():
            if ram.handles is not None and not ram.user_opens and path is None:
                # Unlinked and no guest has it open: release it (libvirt's rm -r).
                ram.detach()
                self._on_detached(ram)
                continue
            if ram.table is None or ram.destroyed or not ram.user_opens:
                continue
            if ram.handles is None and path is not None:
                try:
                    ram.attach(os.path.join(self._root, path), self.config.pin)
                except OSError as exc:
                    LOG.warning("cannot attach %s: %s; its pages stay unpinned", path, exc)
            out.append(ram)
        return out

    # -- pinning ---------------------------------------------------------------

    def _pin_loop(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                for ram in self._active():
                    busy |= self.pin_some(ram)
            except Exception:
                LOG.exception("pinner failed; retrying")
            if not busy:
                self._stop.wait(0.005)

    def pin_some(self, ram: RamFile, limit: int = 1024) -> bool:
        table, h = ram.table, ram.handles
        if table is None or h is None or not self.config.pin:
            return False
        cands = table.pin_candidates(limit)
        if not cands:
            return False
        done: list[tuple[int, int]] = []
        failed: list[tuple[int, int]] = []
        i = 0
        for first, count in contiguous_runs([p for p, _ in cands]):
            chunk = cands[i:i + count]
            i += count
            try:
                syscalls.populate_read(h.addr + first * PAGE_SIZE, count * PAGE_SIZE)
            except OSError as exc:
                if exc.errno not in (errno.EINTR, errno.EAGAIN):
                    LOG.warning("pinning pages %d+%d failed: %s", first, count, exc)
                failed += chunk
                continue
            done += chunk
        table.pin_done(done)
        if failed:
            table.requeue_pins(failed)
        return True

    # -- moving paged-out pages to sub-hosts ---------------------------------------

    def _push_loop(self) -> None:
        buf = memoryview(bytearray(self.config.batch_pages * PAGE_SIZE))
        while not self._stop.is_set():
            busy = False
            try:
                # Every file with remote paging, used or not: pending pushes and
                # drops finish after the guest closed it too.
                for _path, ram in self._files():
                    if ram.table is not None and not ram.destroyed:
                        busy |= self.push_some(ram, buf)
            except Exception:
                LOG.exception("pusher failed; retrying")
            if not busy:
                self._stop.wait(0.01)

    def push_some(self, ram: RamFile, buf: memoryview) -> bool:
        """Move one batch of paged-out pages to a sub-host; drop stale copies."""
        table, remote, vm = ram.table, ram.remote, ram.vm
        if table is None or remote is None or vm is None or ram.quiet:
            return False
        with ram.pager_lock:
            return self._push_locked(ram, table, remote, vm, buf)

    def _push_locked(self, ram: RamFile, table: Any, remote: Any, vm: Any,
                     buf: memoryview) -> bool:
        busy = False
        # Drops first, and synchronously: a stale copy's drop must reach its holder
        # before any later push of the same page to it, or it would delete that one.
        for holder, pages in table.take_drops().items():
            busy = True
            try:
                remote.drop(vm, holder, pages)
            except Exception as exc:
                LOG.warning("dropping %d stale page(s) at %s failed: %s", len(pages),
                            remote.holder_name(holder), exc)
        cands = [] if ram.frozen else table.push_candidates(len(buf) // PAGE_SIZE, buf)
        if cands:
            busy = True
            pages = [p for p, _ in cands]
            data = [buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i in range(len(cands))]
            try:
                holder = remote.push(vm, pages, data, exclude=frozenset(table.closed_holders))
            except Exception as exc:
                LOG.warning("push of %d page(s) failed: %s; they stay local", len(pages), exc)
                table.push_failed(cands)
                self._stop.wait(0.5)
            else:
                table.push_done(cands, holder)
        return busy

    # -- eviction --------------------------------------------------------------

    def _evict_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            try:
                for ram in self._active():
                    self.enforce_limit(ram)
            except Exception:
                LOG.exception("evictor failed; retrying")

    def enforce_limit(self, ram: RamFile) -> int:
        """Evict down to the target below the resident limit; pages paged out."""
        table, limit = ram.table, ram.resident_limit_pages
        ram.over_limit.clear()
        if table is None or not limit or table.resident <= limit:
            return 0
        target = limit * self.config.target_pct // 100
        total = 0
        while not self._stop.is_set() and table.resident > target:
            n = self.evict(ram, min(self.config.batch_pages, table.resident - target))
            if n < 0:
                # Nothing could be paged out (store full): stop throttling page-ins.
                ram.evicted(stalled=True)
                break
            if n == 0:
                break
            total += n
        return total

    def evict(self, ram: RamFile, want: int) -> int:
        """One window: page out up to ``want`` of the coldest resident pages.

        Returns the pages paged out, or -1 when no window could be opened.
        """
        table = ram.table
        if table is None:
            return -1
        window = table.begin_window(min(want, self.config.batch_pages))
        if window is None:
            return -1
        if window.snapshot:
            h = ram.handles
            failed: list[int] = []
            for first, count in contiguous_runs(window.snapshot):
                buf = self._snap[:count * PAGE_SIZE]
                try:
                    if h is None:
                        raise OSError(errno.EBADF, "RAM file not attached")
                    got = os.preadv(h.fd, [buf], first * PAGE_SIZE)
                    if got != len(buf):
                        raise OSError(errno.EIO, f"short snapshot read {got}")
                except OSError as exc:
                    LOG.error("snapshot of pages %d+%d failed (%s): not evicting them",
                              first, count, exc)
                    failed.extend(range(first, first + count))
                    continue
                table.apply_snapshots(first, count, buf)
            if failed:
                table.abort_pages(window, failed)
        for first, count in window.runs():
            t0 = time.perf_counter_ns()
            try:
                self._notify(inval_inode(ram.nodeid, first * PAGE_SIZE, count * PAGE_SIZE))
            except OSError as exc:
                # ENOENT: the kernel holds no inode, hence no page of it.
                if exc.errno != errno.ENOENT:
                    self.notify_errors += 1
                    LOG.warning("invalidation of pages %d+%d failed: %s", first, count, exc)
            self.notify_latency.record_ns(time.perf_counter_ns() - t0)
        out = table.end_window(window)
        ram.evicted()
        return out
