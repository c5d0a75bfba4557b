"""The sub-host page store: pages this host holds for other hosts' VMs.

Behind the fabric's :class:`~nova_ipmigrate.fabric.service.PageService`
(:class:`~nova_ipmigrate.agent.pageservice.AgentPageService` wraps it):
pages are keyed by (instance UUID, page number) and live in a fixed-capacity
:class:`~nova_ipmigrate.memfs.store.PageStore`. A PUT is all or nothing: when
the store cannot take every new page it refuses the whole request.

For partial migration a key may also be a staging key (pages copied here from
another sub-host ahead of a commit); committing moves their slots to the VM,
so it takes no new slot and copies no page.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

from nova_ipmigrate.fabric.errors import (
    PagesNotHeldError,
    RemoteBadRequestError,
    StoreFullError,
)
from nova_ipmigrate.memfs.store import PageStore

Buffer = bytes | bytearray | memoryview
#: pages copied per lock hold when a region is copied out
_COPY_BATCH = 256


class SubHostStore:
    def __init__(self, capacity_pages: int) -> None:
        self.store = PageStore(capacity_pages)
        self._lock = threading.Lock()
        self._vms: dict[uuid.UUID, dict[int, int]] = {}
        self.gets = self.puts = self.drops = 0
        # (key, page) -> sequence number of the put that wrote it
        self._seq = 0
        self._put_seq: dict[tuple[uuid.UUID, int], int] = {}

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[Buffer | None]:
        with self._lock:
            held = self._vms.get(vm, {})
            self.gets += len(pages)
            # Copies: a concurrent drop may reuse the slot before the reply is sent.
            return [self.store.slot(held[p]).tobytes() if p in held else None for p in pages]

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[Buffer]) -> None:
        with self._lock:
            held = self._vms.setdefault(vm, {})
            new = [p for p in dict.fromkeys(pages) if p not in held]
            if len(new) > self.store.free:
                raise StoreFullError(
                    f"sub-host store full: {len(new)} new page(s), {self.store.free} free",
                    list(pages))
            for p, slot in zip(new, self.store.allocate(len(new)), strict=True):
                held[p] = slot
            for p, d in zip(pages, data, strict=True):
                self.store.slot(held[p])[:] = d
                self._seq += 1
                self._put_seq[(vm, p)] = self._seq
            self.puts += len(pages)

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        with self._lock:
            held = self._vms.get(vm)
            if held is None:
                return
            for p in pages:
                slot = held.pop(p, None)
                if slot is not None:
                    self.store.release(slot)
            if not held:
                del self._vms[vm]
            self.drops += len(pages)

    def held_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> tuple[list[int], list[bytes]]:
        """The ones of ``pages`` held for ``vm`` (in order), and copies of their contents.

        Each page is copied under the lock, a batch at a time: a region copy of
        16 MiB must not hold back the page-ins served from this store meanwhile.
        """
        found: list[int] = []
        data: list[bytes] = []
        for start in range(0, len(pages), _COPY_BATCH):
            with self._lock:
                held = self._vms.get(vm, {})
                got = [p for p in pages[start:start + _COPY_BATCH] if p in held]
                # Copies: the slots may be dropped or reused while the pages are sent on.
                data += [self.store.slot(held[p]).tobytes() for p in got]
            found += got
        return found, data

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        """Move ``pages`` from the staging ``key`` to ``vm``, all or nothing; how many moved."""
        if key == vm:
            raise RemoteBadRequestError(f"staging key {key} is the VM itself")
        with self._lock:
            staged = self._vms.get(key, {})
            missing = [p for p in pages if p not in staged]
            if missing:
                raise PagesNotHeldError(
                    f"{len(missing)} of {len(pages)} page(s) not staged under {key}", missing)
            if not pages:
                return 0
            held = self._vms.setdefault(vm, {})
            moved = 0
            for p in dict.fromkeys(pages):
                old = held.get(p)
                staged_at = self._put_seq.pop((key, p), 0)
                if old is not None and self._put_seq.get((vm, p), 0) > staged_at:
                    # Paged out here after the copy was staged: that copy is newer.
                    self.store.release(staged.pop(p))
                    continue
                if old is not None:
                    self.store.release(old)  # the staged copy is the newer one
                held[p] = staged.pop(p)
                self._put_seq[(vm, p)] = staged_at
                moved += 1
            if not staged:
                del self._vms[key]
            return moved

    def drop_vm(self, vm: uuid.UUID) -> int:
        """Forget every page held for ``vm`` (a VM or a staging key); how many there were."""
        with self._lock:
            held = self._vms.pop(vm, {})
            for slot in held.values():
                self.store.release(slot)
            self.drops += len(held)
            return len(held)

    def held_of(self, vm: uuid.UUID) -> int:
        """Pages held for ``vm``."""
        with self._lock:
            return len(self._vms.get(vm, {}))

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {"capacity_pages": self.store.capacity, "used_pages": self.store.used,
                    "vms": {str(vm): len(held) for vm, held in self._vms.items()},
                    "gets": self.gets, "puts": self.puts, "drops": self.drops}
