"""The local page store: where paged-out pages of guest RAM live on this host.

A fixed-capacity slab of 4 KiB slots in anonymous memory. Slots are handed out
and taken back by the page table (``pages.py``), which is the only owner of the
mapping from guest pages to slots; the store itself knows nothing of guests.
"""

from __future__ import annotations

import mmap

from nova_ipmigrate.memfs.protocol import PAGE_SIZE

ZERO_PAGE = bytes(PAGE_SIZE)


class StoreFull(Exception):
    """The page store has no free slot; nothing was changed."""

    def __init__(self, wanted: int, free: int, capacity: int) -> None:
        super().__init__(
            f"page store full: {wanted} slot(s) wanted, {free} free of {capacity} "
            f"({capacity * PAGE_SIZE // 2**20} MiB); raise [memfs] page_store_mb or "
            f"the resident limit")
        self.wanted = wanted
        self.free = free
        self.capacity = capacity


class PageStore:
    """Slots of PAGE_SIZE bytes. Not thread-safe: callers hold the page-table lock."""

    def __init__(self, capacity_pages: int) -> None:
        if capacity_pages < 1:
            raise ValueError("page store capacity must be at least one page")
        self.capacity = capacity_pages
        self._slab = mmap.mmap(-1, capacity_pages * PAGE_SIZE)
        self._view = memoryview(self._slab)
        # LIFO so recently freed (already faulted-in) slots are reused first.
        self._free = list(range(capacity_pages - 1, -1, -1))

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.capacity - len(self._free)

    def allocate(self, count: int = 1) -> list[int]:
        if count < 0:
            raise ValueError(f"cannot allocate {count} slots")
        if count > len(self._free):
            raise StoreFull(count, len(self._free), self.capacity)
        taken = self._free[-count:] if count else []
        del self._free[len(self._free) - count:]
        return taken

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def slot(self, slot: int) -> memoryview:
        off = slot * PAGE_SIZE
        return self._view[off:off + PAGE_SIZE]

    def close(self) -> None:
        self._view.release()
        self._slab.close()
