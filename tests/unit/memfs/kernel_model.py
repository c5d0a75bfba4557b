"""A model of the kernel's page cache for one RAM file, driving a real PageTable.

It plays the kernel's part in every interaction memfs has with it: faults
(READ), guest stores (dirty pages), writeback and launder (WRITE), memory
cgroup reclaim of clean unlocked pages, pinning through the daemon's locked
mapping, and the eviction sequence split into its steps so tests can
interleave anything between them. ``truth`` is what the guest last stored.
"""

from __future__ import annotations

from nova_ipmigrate.memfs.pages import PageState, PageTable, Window
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import PageStore, StoreFull

ZERO = bytes(PAGE_SIZE)


def page_value(tag: int) -> bytes:
    return tag.to_bytes(8, "little") * (PAGE_SIZE // 8)


class KernelModel:
    def __init__(self, npages: int, store_pages: int | None = None,
                 remote: bool = False) -> None:
        self.store = PageStore(store_pages or npages * 2)
        self.table = PageTable(npages, self.store)
        self.npages = npages
        self.cache: dict[int, bytearray] = {}
        self.dirty: set[int] = set()
        self.locked: set[int] = set()
        self.truth: dict[int, bytes] = {}
        self.stale_reads: list[int] = []
        #: sub-hosts: holder -> page -> content (what the fabric would hold)
        self.remote: dict[int, dict[int, bytes]] = {}
        self.table.push_enabled = remote
        self.table.fetch_reserve = 2

    # -- the guest ------------------------------------------------------------

    def fault(self, p: int) -> None:
        """A guest access to a page not in the page cache: one READ."""
        if p in self.cache:
            return
        buf = memoryview(bytearray(PAGE_SIZE))
        for r in self.table.read(p, 1, buf):
            (holder,) = self.table.holder_of([r])
            data = self.remote[holder][r]
            try:
                self.table.fill_remote(r, data)
            except StoreFull:
                self.pin()  # what memfs waits for: the pinner frees copies
                self.table.fill_remote(r, data)  # still full: the READ fails
            buf[:] = data
        if bytes(buf) != self.truth.get(p, ZERO):
            self.stale_reads.append(p)
        self.cache[p] = bytearray(buf)

    def store_to(self, p: int, tag: int) -> None:
        self.fault(p)
        self.cache[p][:] = page_value(tag)
        self.dirty.add(p)
        self.truth[p] = page_value(tag)

    def load(self, p: int) -> bytes:
        self.fault(p)
        return bytes(self.cache[p])

    # -- the kernel -------------------------------------------------------------

    def writeback(self, p: int) -> None:
        if p in self.dirty:
            self.table.write(p, 0, memoryview(bytes(self.cache[p])))
            self.dirty.discard(p)

    def reclaim(self, p: int) -> bool:
        """Memory-cgroup reclaim: clean pages silently, dirty after writeback."""
        if p not in self.cache or p in self.locked:
            return False
        self.writeback(p)
        del self.cache[p]
        return True

    def invalidate(self, pages: list[int]) -> None:
        """NOTIFY_INVAL_INODE: launder dirty pages, drop all, unmap everywhere."""
        for p in pages:
            if p in self.cache:
                if p in self.dirty:
                    self.table.write(p, 0, memoryview(bytes(self.cache[p])))
                    self.dirty.discard(p)
                del self.cache[p]
                self.locked.discard(p)

    # -- the daemon's pager, step by step ----------------------------------------

    def pin(self, n: int = 1 << 30) -> list[tuple[int, int]]:
        cands = self.table.pin_candidates(n)
        for p, _ in cands:
            self.fault(p)  # MADV_POPULATE_READ faults in what is missing
            self.locked.add(p)
        self.table.pin_done(cands)
        return cands

    def begin(self, n: int) -> Window | None:
        return self.table.begin_window(n)

    def snapshot(self, w: Window) -> None:
        for p in w.snapshot:
            self.fault(p)  # pread through the mount: a page-cache hit, or a READ
            self.table.apply_snapshots(p, 1, memoryview(bytes(self.cache[p])))

    def finish(self, w: Window) -> int:
        self.invalidate(w.pages)
        return self.table.end_window(w)

    def evict(self, n: int) -> int:
        w = self.begin(n)
        if w is None:
            return 0
        self.snapshot(w)
        return self.finish(w)

    # -- the pusher, in two steps ---------------------------------------------------

    def push_begin(self, n: int) -> tuple[list[tuple[int, int]], list[bytes]]:
        self.drops()  # as the pusher: stale copies are dropped before new pushes
        buf = memoryview(bytearray(n * PAGE_SIZE))
        cands = self.table.push_candidates(n, buf)
        return cands, [bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) for i in range(len(cands))]

    def push_end(self, cands: list[tuple[int, int]], data: list[bytes], holder: int) -> None:
        held = self.remote.setdefault(holder, {})
        for (p, _), d in zip(cands, data, strict=True):
            held[p] = d
        self.table.push_done(cands, holder)

    def drops(self) -> None:
        for holder, pages in self.table.take_drops().items():
            for p in pages:
                self.remote.get(holder, {}).pop(p, None)

    def push(self, n: int, holder: int = 1) -> None:
        self.push_end(*self.push_begin(n), holder)
        self.drops()

    # -- checks -------------------------------------------------------------------

    def check(self) -> None:
        """Every page's current content is somewhere it can be read from."""
        assert not self.stale_reads, f"READ returned stale data for pages {self.stale_reads}"
        for p in range(self.npages):
            if p in self.cache:
                assert self.table.state[p] != PageState.ZERO or self.truth.get(p, ZERO) == ZERO
                continue
            assert self.table.state[p] != PageState.PINNED, f"page {p} pinned but not cached"
            if self.table.state[p] == PageState.REMOTE:
                (holder,) = self.table.holder_of([p])
                got = self.remote.get(holder, {}).get(p)
                assert got == self.truth.get(p, ZERO), f"page {p} lost at holder {holder}"
                continue
            assert self.table.content(p) == self.truth.get(p, ZERO), f"page {p} lost"

    def check_slots(self) -> None:
        held = sum(1 for p in range(self.npages) if self.table.slot[p] >= 0)
        assert self.store.used == held, f"store used {self.store.used}, pages hold {held}"
        counts = self.table.state_counts()
        assert sum(counts.values()) == self.npages
