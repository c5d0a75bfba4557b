"""A RAM file: one guest's memory object on memfs.

Owns the file's size, its page table, its resident limit, who has it open,
and the daemon's own handles on it (an fd for snapshots and a read-only,
lock-on-fault mapping used to pin resident pages against reclaim).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from nova_ipmigrate.memfs import syscalls
from nova_ipmigrate.memfs.pages import PageTable
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.remote import RemotePaging
from nova_ipmigrate.memfs.store import PageStore
from nova_ipmigrate.memfs.tree import FsError

LOG = logging.getLogger(__name__)


@dataclass
class DaemonHandles:
    """The daemon's own view of a RAM file, opened through the mount."""

    fd: int
    addr: int
    length: int


class DirectoryGate:
    """A RAM file whose page directory is still on the old main host (main-host move).

    QEMU at the new main host reads guest RAM first while it loads the device
    state, that is after the source stopped. The first READ fetches the
    directory (``fetch`` installs it in the page table), every other waits for
    it; a fetch that fails fails them all (EIO: the destination does not load,
    libvirt resumes the source).
    """

    def __init__(self, fetch: Callable[[], None], timeout: float = 30.0) -> None:
        self._fetch = fetch
        self.timeout = timeout
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.error: str | None = None
        self.fetched_at: float | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        if not self._done.is_set() and self._lock.acquire(blocking=False):
            try:
                if not self._done.is_set():
                    try:
                        self._fetch()
                        self.fetched_at = time.time()
                    except Exception as exc:  # reported to every reader
                        LOG.error("fetching the page directory failed: %s", exc)
                        self.error = str(exc) or type(exc).__name__
                    self._done.set()
            finally:
                self._lock.release()
        if not self._done.wait(self.timeout):
            raise OSError(errno.ETIMEDOUT, "the page directory did not arrive")
        if self.error is not None:
            raise OSError(errno.EIO, f"no page directory: {self.error}")


class RamFile:
    """Guest RAM backed by memfs pages.

    The size is set once (QEMU's ftruncate after create, or by the agent when
    it prepares the file); resizing a file whose pages are in use is refused
    because the kernel would drop the page cache of the whole file.
    """

    def __init__(self, nodeid: int, store: PageStore, resident_limit_pages: int = 0) -> None:
        self.nodeid = nodeid
        self.store = store
        self.size = 0
        self.table: PageTable | None = None
        self.resident_limit_pages = resident_limit_pages
        self.user_opens = 0        # handles held by processes other than the daemon
        self.handles: DaemonHandles | None = None
        self.destroyed = False
        #: the instance this RAM belongs to; the key of its pages on other hosts
        self.vm: uuid.UUID | None = None
        #: where paged-out pages go; None: they stay in the local store
        self.remote: RemotePaging | None = None
        #: pages whose content could not be fetched: the instance is broken
        self.lost_pages: set[int] = set()
        #: how the evictor picks victims (pages.VICTIM_POLICIES)
        self.victim_policy = "recency"
        #: set by the READ path when over the limit: wakes the evictor
        self.over_limit = threading.Event()
        # Page-ins past the hard limit wait for the evictor (bounded), so the
        # resident set stays near the limit even when faults outpace eviction.
        self._below_hard = threading.Condition()
        #: the evictor cannot page out (store full): page-ins must not wait for it
        self.eviction_stalled = False
        #: main-host move away from here: no page leaves for a sub-host any more
        #: (stale copies are still dropped), so the directory can be handed over
        self.frozen = False
        #: main-host move to here, until it is committed: nothing is sent to the
        #: holders (no push, no drop), because the old main host may resume
        self.quiet = False
        #: held by the pusher around each batch: waiting for it waits out a push
        self.pager_lock = threading.Lock()
        #: main-host move to here: READs wait until the page directory arrived
        self.incoming: DirectoryGate | None = None

    @property
    def npages(self) -> int:
        return self.size // PAGE_SIZE

    @property
    def in_use(self) -> bool:
        return self.user_opens > 0 or self.handles is not None

    def resize(self, size: int) -> None:
        if size == self.size:
            return
        if size < 0 or size % PAGE_SIZE:
            raise FsError(22, f"RAM file size {size} is not a multiple of {PAGE_SIZE}")
        table = self.table
        if table is not None and table.counts[0] != table.npages:
            raise FsError(1, "cannot resize a RAM file whose pages are in use")
        if table is not None:
            table.release_all()
        self.size = size
        self.table = PageTable(size // PAGE_SIZE, self.store) if size else None
        if self.table is not None:
            self.table.push_enabled = self.remote is not None
            self.table.victim_policy = self.victim_policy
            if self.resident_limit_pages:
                self.table.hot_distance = self.resident_limit_pages

    def set_remote(self, vm: uuid.UUID, remote: RemotePaging | None) -> None:
        """Page out to sub-hosts through ``remote`` (None: keep pages local)."""
        self.vm = vm
        self.remote = remote
        if self.table is not None:
            self.table.push_enabled = remote is not None

    def set_resident_limit(self, pages: int) -> None:
        self.resident_limit_pages = max(0, pages)
        if self.table is not None and pages:
            self.table.hot_distance = pages
        self.over_limit.set()

    @property
    def hard_limit_pages(self) -> int:
        lim = self.resident_limit_pages
        return lim + max(lim // 20, 256) if lim else 0

    def throttle(self, max_wait_s: float) -> bool:
        """Before a page-in: wait while the file is at its hard limit.

        Returns True when it waited. Never waits longer than ``max_wait_s``;
        the caller bounds how many readers may wait at once, so one is always
        free for the launder WRITEs the evictor's invalidations cause.
        """
        t, hard = self.table, self.hard_limit_pages
        if t is None or not hard or t.resident < hard or self.eviction_stalled:
            return False
        self.over_limit.set()
        with self._below_hard:
            self._below_hard.wait_for(
                lambda: t.resident < hard or self.eviction_stalled, max_wait_s)
        return True

    def evicted(self, stalled: bool = False) -> None:
        """The evictor paged pages out (or cannot): wake throttled page-ins."""
        self.eviction_stalled = stalled
        with self._below_hard:
            self._below_hard.notify_all()

    def check_limit(self) -> bool:
        """True (and the event set) when resident pages exceed the limit."""
        t = self.table
        if t is not None and self.resident_limit_pages and t.resident > self.resident_limit_pages:
            self.over_limit.set()
            return True
        return False

    # -- the daemon's handles -------------------------------------------------

    def attach(self, path: str, pin: bool) -> None:
        """Open the file through the mount (never from a reader thread)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            addr = syscalls.mmap_shared_readonly(fd, self.size)
            if pin:
                try:
                    syscalls.mlock_onfault(addr, self.size)
                except OSError:
                    syscalls.munmap(addr, self.size)
                    raise
        except OSError:
            os.close(fd)
            raise
        self.handles = DaemonHandles(fd, addr, self.size)

    def detach(self) -> None:
        """Drop the daemon's handles; must run while reader threads still serve."""
        h, self.handles = self.handles, None
        if h is None:
            return
        try:
            syscalls.munmap(h.addr, h.length)
        finally:
            os.close(h.fd)

    def destroy(self) -> None:
        if self.table is not None:
            self.table.release_all()
        self.table = None
        self.destroyed = True

    def stats(self) -> dict[str, object]:
        t = self.table
        if t is None:
            return {"size": self.size, "pages": 0}
        s = t.stats
        return {
            "size": self.size,
            "pages": t.npages,
            "resident_limit_pages": self.resident_limit_pages,
            "resident": t.resident,
            "states": t.state_counts(),
            "page_ins": s.page_ins, "page_outs": s.page_outs,
            "refetched": s.refetched, "lost": s.lost, "zero_elided": s.zero_elided,
            "writes_kept": s.writes_kept, "writes_discarded": s.writes_discarded,
            "pins": s.pins, "pin_retries": s.pin_retries, "store_full": s.store_full,
            "windows": s.windows, "attached": self.handles is not None,
            "remote_page_ins": s.remote_page_ins, "remote_page_outs": s.remote_page_outs,
            "remote_stale": s.remote_stale, "vm": str(self.vm) if self.vm else None,
            "broken": bool(self.lost_pages), "lost_remote_pages": sorted(self.lost_pages)[:64],
            "frozen": self.frozen, "quiet": self.quiet,
            "incoming": self.incoming is not None and not self.incoming.done,
        }
