"""The per-page state machine of one RAM file: where each guest page's content is.

Every transition of a page happens in a method of :class:`PageTable`, under its
lock; callers do the I/O (serve a READ, mlock a page, snapshot it, send the
invalidation) with the lock released and report back. The rules come from
measured races (``findings/fuse-guest-ram-feasibility.md`` section 4):

* A page's content is never forgotten until it is pinned (mlocked) in the page
  cache or in the store: a READ keeps the store copy (``CACHED``), and only a
  completed pin with no eviction since its page-in drops it (``PINNED``). This
  covers the *uptodate race* (a reply written is not a page in the cache yet)
  and memory-cgroup reclaim of clean, unpinned pages.
* Eviction publishes a *window* over its pages before choosing what to
  snapshot; a READ inside the window keeps its copy and the page stays
  resident (*big-range race*); a WRITE of a pinned page inside a window is the
  newest content and is kept, outside it is discarded (*writeback race*).
* Pages to snapshot are chosen from this table (``PINNED``), never from mincore.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import threading
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import ZERO_PAGE, PageStore, StoreFull

if TYPE_CHECKING:
    from nova_ipmigrate.migration.consistency import PartMove

LOG = logging.getLogger(__name__)


class PageState(enum.IntEnum):
    ZERO = 0         # all zeros; not in the page cache; no slot
    STORED = 1       # in a store slot; not in the page cache (paged out)
    CACHED = 2       # in the page cache; the slot holds a copy, completed by pending writeback
    CACHED_ZERO = 3  # in the page cache; the copy is implicitly zero
    PINNED = 4       # in the page cache and mlocked: the page cache holds the only copy
    REMOTE = 5       # paged out to a sub-host (holder[p]); nothing here


RESIDENT = (PageState.CACHED, PageState.CACHED_ZERO, PageState.PINNED)
_ZERO, _STORED, _CACHED, _CZ, _PINNED, _REMOTE = (int(s) for s in PageState)

#: directory code of a page the (old) main host holds itself
HERE = 255
_HERE_CODES = bytes(HERE if s in (_STORED, _CACHED, _CZ, _PINNED) else 0 for s in range(256))
_STATE_OF_CODE = bytes([_ZERO]) + bytes([_REMOTE]) * 255

F_WINDOW = 1          # inside an open eviction window
F_READ_IN_WINDOW = 2  # paged in while its window was open: stays resident

#: Victim selection. memfs cannot see accesses to resident pages, so "recency"
#: approximates them: least recently paged-in first, and a page that faults
#: back in soon after being paged out (within a limit's worth of page-outs) is
#: hot and gets one second chance. "random" exists to compare against. These are
#: the algorithms; [memfs] victim_policy names a plugin (memfs.victim) that runs one.
VICTIM_POLICIES = ("recency", "random")


class WriteRejected(Exception):
    """A WRITE that cannot be taken now; carries the errno for the reply."""

    def __init__(self, errno_: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = errno_


@dataclass
class Window:
    """An eviction in progress: pages under a window, in ascending order."""

    pages: list[int]
    #: pages whose only copy is the page cache: snapshot before invalidating
    snapshot: list[int]
    opened_at_epoch: int

    def runs(self, pages: list[int] | None = None) -> list[tuple[int, int]]:
        return contiguous_runs(self.pages if pages is None else pages)


def contiguous_runs(pages: list[int]) -> list[tuple[int, int]]:
    """[(first page, count)] for sorted ``pages``."""
    runs: list[tuple[int, int]] = []
    for p in pages:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


@dataclass
class PageCounters:
    page_ins: int = 0          # pages served by READ
    refetched: int = 0         # READ of a page we believed resident (reclaimed, copy kept)
    lost: int = 0              # READ of a pinned page: its only copy vanished (must stay 0)
    page_outs: int = 0         # pages that left the page cache through eviction
    zero_elided: int = 0       # paged-out pages found all-zero: no slot kept
    writes_kept: int = 0       # WRITE pages stored (writeback, launder, write(2))
    writes_discarded: int = 0  # writeback of pinned pages outside windows
    pins: int = 0              # pages pinned, their store copy released
    pin_retries: int = 0       # pins undone by an eviction or page-in meanwhile
    store_full: int = 0        # evictions held back because the store was full
    remote_page_ins: int = 0   # pages fetched from a sub-host
    remote_page_outs: int = 0  # paged-out pages moved to a sub-host
    remote_stale: int = 0      # pushes overtaken by a page-in: the sub-host copy is dropped
    remote_refused: int = 0    # pushes to a holder closed meanwhile: undone, pages stay here
    windows: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class PageTable:
    """State of every page of one RAM file of ``npages`` pages."""

    def __init__(self, npages: int, store: PageStore) -> None:
        self.npages = npages
        self.store = store
        self.lock = threading.Lock()
        self.state = bytearray(npages)
        self.flags = bytearray(npages)
        self.slot = array("q", [-1]) * npages
        # Page-in sequence number of each page: recency for victim choice, and
        # the check that a pin still refers to the same page-cache folio.
        self.stamp = array("Q", [0]) * npages
        self._seq = 0
        self.counts = [0] * len(PageState)
        self.counts[_ZERO] = npages
        self._cz_reserved = 0  # CACHED_ZERO pages holding a reserved slot
        self._lru: collections.deque[tuple[int, int]] = collections.deque()
        self._pin_queue: collections.deque[int] = collections.deque()
        # The page directory for paged-out pages: which sub-host holds each page
        # (index into the RAM file's holder list, 0 = none). Set only in REMOTE.
        self.holder = bytearray(npages)
        #: paged-out pages waiting to move to a sub-host (only with remote paging)
        self.push_enabled = False
        #: with remote paging, free slots eviction leaves for page-ins from sub-hosts
        #: (each needs a local slot until the page is pinned)
        self.fetch_reserve = 64
        self._push_queue: collections.deque[int] = collections.deque()
        #: (holder, page) copies at sub-hosts that are stale and must be dropped there
        self._drop_queue: collections.deque[tuple[int, int]] = collections.deque()
        self.epoch = 0
        self.victim_policy = "recency"
        #: page-outs since which a page-in counts as a refault of a hot page
        self.hot_distance = max(1, npages // 4)
        self._out_seq = array("Q", [0]) * npages  # page-out count when it last left
        self._hot = bytearray(npages)
        self._rng = random.Random(npages)
        self.stats = PageCounters()
        self._last_full_log = 0
        #: part moves in progress (``migration.consistency.PartMove``): told, under
        #: this lock, of every page that leaves or reaches a holder
        self.moves: list[PartMove] = []
        #: holders no page may move to now (being emptied): their pushes are undone
        self.closed_holders: set[int] = set()

    # -- helpers (lock held) ----------------------------------------------

    def _set(self, page: int, new: int) -> None:
        self.counts[self.state[page]] -= 1
        self.counts[new] += 1
        self.state[page] = new

    def _became_resident(self, page: int) -> None:
        self._seq += 1
        self.stamp[page] = self._seq
        self._lru.append((page, self._seq))
        self._pin_queue.append(page)
        if len(self._lru) > 4 * self.npages + 1024:
            self._lru = collections.deque(
                (p, s) for p, s in self._lru
                if self.stamp[p] == s and _CACHED <= self.state[p] <= _PINNED)

    def _release_slot(self, page: int) -> None:
        s = self.slot[page]
        if s >= 0:
            self.store.release(s)
            self.slot[page] = -1
            if self.state[page] == _CZ:
                self._cz_reserved -= 1

    @property
    def resident(self) -> int:
        return self.counts[_CACHED] + self.counts[_CZ] + self.counts[_PINNED]

    # -- page-in ------------------------------------------------------------

    def read(self, first: int, count: int, out: memoryview) -> list[int]:
        """Fill ``out`` with pages [first, first+count) for a FUSE READ.

        Returns the pages held by sub-hosts: the caller fetches them and hands
        each to :meth:`fill_remote` (no lock is held across the network).
        """
        remote: list[int] = []
        with self.lock:
            for i in range(count):
                p = first + i
                dst = out[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                st = self.state[p]
                if st == _REMOTE:
                    remote.append(p)
                    continue
                in_window = self.flags[p] & F_WINDOW
                if st == _STORED or st == _CACHED:
                    dst[:] = self.store.slot(self.slot[p])
                    if st == _STORED:
                        self._set(p, _CACHED)
                    elif not in_window:
                        self.stats.refetched += 1
                elif st == _ZERO or st == _CZ:
                    dst[:] = ZERO_PAGE
                    if st == _ZERO:
                        self._set(p, _CZ)
                    elif not in_window:
                        self.stats.refetched += 1
                else:  # PINNED: the kernel dropped the only copy. Never expected.
                    self.stats.lost += 1
                    LOG.error("page %d was pinned but the kernel asked for it again: "
                              "its content is lost", p)
                    dst[:] = ZERO_PAGE
                    self._release_slot(p)
                    self._set(p, _CZ)
                if in_window:
                    self.flags[p] |= F_READ_IN_WINDOW
                self._note_refault(p)
                self.stats.page_ins += 1
                self._became_resident(p)
        return remote

    def _note_refault(self, p: int) -> None:
        out = self._out_seq[p]
        if out and self.stats.page_outs - out < self.hot_distance:
            self._hot[p] = 1

    def fill_remote(self, page: int, data: memoryview | bytes, holder: int | None = None) -> bool:
        """A page fetched from its sub-host for a READ: it becomes CACHED here.

        ``holder``: the host it was fetched from. Returns False (nothing
        changed) when the page is no longer held there: a part move switched
        it or brought it home while it was fetched, and the caller asks again.
        The stale copy at the holder is queued to be dropped there. Raises
        StoreFull (nothing changed) when no local slot is free.
        """
        with self.lock:
            if self.state[page] != _REMOTE or (holder is not None
                                               and self.holder[page] != holder):
                if holder is None:
                    raise ValueError(f"page {page} is not held by a sub-host")
                return False
            slot = self.store.allocate(1)[0]
            self.store.slot(slot)[:] = data
            self.slot[page] = slot
            self._note_refault(page)
            holder, self.holder[page] = self.holder[page], 0
            self._drop_queue.append((holder, page))
            self._set(page, _CACHED)
            for move in self.moves:
                move.page_left(page, holder)
            self.stats.page_ins += 1
            self.stats.remote_page_ins += 1
            self._became_resident(page)
            return True

    def bring_home(self, page: int, data: memoryview | bytes, holder: int, stamp: int) -> bool:
        """A remote page comes back into the local store (``STORED``), lock held.

        Only if it is still held by ``holder`` with page-in stamp ``stamp`` (so
        ``data``, read from the holder, is current). The holder's copy is
        queued to be dropped. Raises StoreFull (nothing changed).
        """
        if not (self.state[page] == _REMOTE and self.holder[page] == holder
                and self.stamp[page] == stamp):
            return False
        slot = self.store.allocate(1)[0]
        self.store.slot(slot)[:] = data
        self.slot[page] = slot
        self.holder[page] = 0
        self._set(page, _STORED)
        self._drop_queue.append((holder, page))
        for move in self.moves:
            move.page_left(page, holder)
        return True

    def remote_pages(self, holder: int) -> list[tuple[int, int]]:
        """(page, stamp) of every page ``holder`` holds, ascending."""
        with self.lock:
            return [(p, self.stamp[p]) for p in range(self.npages)
                    if self.state[p] == _REMOTE and self.holder[p] == holder]

    def holders(self) -> dict[int, int]:
        """Pages held by each holder (0: this host, resident or in the local store)."""
        with self.lock:
            out: dict[int, int] = {}
            for st, h in zip(self.state, self.holder, strict=True):
                if st == _REMOTE:
                    out[h] = out.get(h, 0) + 1
                elif st != _ZERO:
                    out[0] = out.get(0, 0) + 1
            return out

    # -- the directory, handed over in a main-host move -------------------------------

    def directory(self) -> bytes:
        """One code per page: 0 never written, :data:`HERE` resident or in the local
        store, else the holder (sub-host) that has it."""
        with self.lock:
            state, holder = bytes(self.state), bytes(self.holder)
        if self.npages and max(holder) >= HERE:
            raise ValueError(f"holder {HERE} cannot be encoded in a directory")
        here = state.translate(_HERE_CODES)
        n = self.npages
        return (int.from_bytes(here, "little") | int.from_bytes(holder, "little")).to_bytes(
            n, "little")

    def install_directory(self, codes: bytes, holder_map: bytes) -> int:
        """A new main host takes the old one's directory: each page with a code other
        than 0 becomes ``REMOTE`` at ``holder_map[code]`` (a 256-byte translation
        table; :data:`HERE` maps to the old main host). Only before any page-in.
        Returns the pages now remote."""
        if len(codes) != self.npages or len(holder_map) != 256 or holder_map[0] != 0:
            raise ValueError("a directory of another size, or a bad holder map")
        state = codes.translate(_STATE_OF_CODE)
        holder = codes.translate(holder_map)
        for code in range(1, 256):
            if holder_map[code] == 0 and codes.find(bytes([code])) >= 0:
                raise ValueError(f"directory code {code} has no holder here")
        with self.lock:
            if self.counts[_ZERO] != self.npages:
                raise ValueError("pages were paged in before the directory arrived")
            self.state[:] = state
            self.holder[:] = holder
            remote = state.count(_REMOTE)
            self.counts = [0] * len(PageState)
            self.counts[_ZERO] = self.npages - remote
            self.counts[_REMOTE] = remote
            return remote

    def queue_push_all(self) -> int:
        """Queue every page in the local store for a push (re-splitting a gathered VM)."""
        with self.lock:
            pages = [p for p in range(self.npages) if self.state[p] == _STORED]
            self._push_queue.extend(pages)
            return len(pages)

    def holder_of(self, pages: list[int]) -> list[int]:
        with self.lock:
            return [self.holder[p] if self.state[p] == _REMOTE else 0 for p in pages]

    # -- moving paged-out pages to sub-hosts ------------------------------------

    def push_candidates(self, limit: int, out: memoryview) -> list[tuple[int, int]]:
        """Up to ``limit`` paged-out pages to push, their content copied into ``out``.

        Returns (page, stamp) pairs; the stamp tells :meth:`push_done` whether
        the page was paged in (and its content possibly changed) meanwhile.
        """
        taken: list[tuple[int, int]] = []
        with self.lock:
            q = self._push_queue
            seen: set[int] = set()  # the queue may hold a page twice (paged out twice)
            while q and len(taken) < limit:
                p = q.popleft()
                if self.state[p] != _STORED or p in seen:
                    continue
                seen.add(p)
                n = len(taken)
                out[n * PAGE_SIZE:(n + 1) * PAGE_SIZE] = self.store.slot(self.slot[p])
                taken.append((p, self.stamp[p]))
        return taken

    def push_done(self, pushed: list[tuple[int, int]], holder: int) -> list[int]:
        """The sub-host ``holder`` acknowledged the pages: the directory moves them.

        Returns the pages whose pushed copy is stale (paged in meanwhile); they
        are queued to be dropped at the holder.
        """
        stale: list[int] = []
        with self.lock:
            if holder in self.closed_holders:
                # Closed while the push was on the way (its part is moving away):
                # the pages stay here and go elsewhere; the pushed copies are dropped.
                for p, stamp in pushed:
                    self._drop_queue.append((holder, p))
                    if self.state[p] == _STORED and self.stamp[p] == stamp:
                        self._push_queue.append(p)
                self.stats.remote_refused += len(pushed)
                return [p for p, _ in pushed]
            accepted: set[int] = set()
            for p, stamp in pushed:
                if self.state[p] == _STORED and self.stamp[p] == stamp:
                    self._release_slot(p)
                    self.holder[p] = holder
                    self._set(p, _REMOTE)
                    self.stats.remote_page_outs += 1
                    accepted.add(p)
                    for move in self.moves:
                        move.page_arrived(p, holder)
                else:
                    stale.append(p)
                    self._drop_queue.append((holder, p))
            if accepted and self._drop_queue:
                # A drop of (holder, p) still queued was meant for an older copy, which
                # the put just replaced: sent now, it would delete the current one.
                self._drop_queue = collections.deque(
                    (h, q) for h, q in self._drop_queue
                    if not (h == holder and q in accepted))
            self.stats.remote_stale += len(stale)
        return stale

    def take_drops(self) -> dict[int, list[int]]:
        """Stale sub-host copies to drop, by holder: all of them.

        All at once, never some: the pusher sends them before its next push, so
        a drop queued before a push always reaches its holder before that push
        (and before any copy of the page staged and committed after it). A
        drop left behind could delete a newer copy of its page later.
        """
        out: dict[int, list[int]] = {}
        with self.lock:
            q, self._drop_queue = self._drop_queue, collections.deque()
        for holder, p in q:
            out.setdefault(holder, []).append(p)
        return out

    def push_failed(self, pushed: list[tuple[int, int]]) -> None:
        with self.lock:
            self._push_queue.extendleft(p for p, _ in pushed)

    # -- WRITE (writeback, launder, write(2)) -------------------------------

    def write(self, page: int, offset: int, data: memoryview) -> None:
        """Take a WRITE of ``data`` at ``offset`` within ``page``."""
        full = offset == 0 and len(data) == PAGE_SIZE
        with self.lock:
            st = self.state[page]
            in_window = self.flags[page] & F_WINDOW
            if st == _PINNED:
                if not in_window:
                    # The page cache holds this content and cannot lose it.
                    self.stats.writes_discarded += 1
                    return
                if not full:
                    raise WriteRejected(11, f"partial write to page {page} being paged out")
                # Inside a window this is the newest content: keep it in the
                # slot reserved when the window opened.
                self.store.slot(self.slot[page])[:] = data
                self._set(page, _CACHED)
                self.stats.writes_kept += 1
                return
            if st == _REMOTE:
                # Only write(2) reaches a page held by a sub-host (the page cache
                # has none of it). A full page replaces it; a partial write would
                # need the remote content first.
                if not full:
                    raise WriteRejected(11, f"partial write to page {page} held by a sub-host")
                self.slot[page] = self.store.allocate(1)[0]
                self.store.slot(self.slot[page])[:] = data
                holder, self.holder[page] = self.holder[page], 0
                self._drop_queue.append((holder, page))
                self._set(page, _CACHED)
                for move in self.moves:
                    move.page_left(page, holder)
                self._became_resident(page)
                self.stats.writes_kept += 1
                return
            if st == _CZ or st == _ZERO:
                if self.slot[page] < 0:
                    # Only reachable outside windows; eviction keeps headroom
                    # for every CACHED_ZERO page (see begin_window).
                    self.slot[page] = self.store.allocate(1)[0]
                elif st == _CZ:
                    self._cz_reserved -= 1
                buf = self.store.slot(self.slot[page])
                if not full:
                    buf[:] = ZERO_PAGE
                buf[offset:offset + len(data)] = data
                self._set(page, _CACHED)
                if st == _ZERO:
                    self._became_resident(page)
            else:  # STORED or CACHED
                self.store.slot(self.slot[page])[offset:offset + len(data)] = data
                if st == _STORED:
                    self._set(page, _CACHED)
                    self._became_resident(page)
            self.stats.writes_kept += 1

    # -- pinning --------------------------------------------------------------

    def pin_candidates(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` (page, stamp) pairs to pin, ascending by page."""
        out: list[tuple[int, int]] = []
        with self.lock:
            q = self._pin_queue
            while q and len(out) < limit:
                p = q.popleft()
                st = self.state[p]
                if (st == _CACHED or st == _CZ) and not self.flags[p] & F_WINDOW:
                    out.append((p, self.stamp[p]))
        out.sort()
        return out

    def pin_done(self, pinned: list[tuple[int, int]]) -> None:
        """The pages were mapped into the daemon's locked mapping: drop copies.

        Only when the page was not paged in again since (same stamp) and no
        window covers it is the pinned folio the one holding its content.
        """
        with self.lock:
            for p, stamp in pinned:
                st = self.state[p]
                if st != _CACHED and st != _CZ:
                    continue
                if self.stamp[p] != stamp or self.flags[p] & F_WINDOW:
                    self.stats.pin_retries += 1
                    self._pin_queue.append(p)
                    continue
                self._release_slot(p)
                self._set(p, _PINNED)
                self.stats.pins += 1

    def requeue_pins(self, pages: list[tuple[int, int]]) -> None:
        with self.lock:
            self._pin_queue.extend(p for p, _ in pages)

    # -- eviction ------------------------------------------------------------

    def begin_window(self, want: int) -> Window | None:
        """Open a window over up to ``want`` of the least recently paged-in pages.

        Slots are reserved for every page that may need one (pinned pages for
        their snapshot, cached-zero pages for a launder), keeping enough free
        slots for the writeback of every other cached-zero page. Returns None
        when nothing can be evicted now (store full: counted and logged).
        """
        with self.lock:
            victims: list[int] = []
            headroom = self.counts[_CZ] - self._cz_reserved
            if self.push_enabled:
                headroom += self.fetch_reserve
            free = self.store.free
            held_back = False
            lru = self._lru
            skipped: list[tuple[int, int]] = []
            second_chances = len(lru)
            rnd = self.victim_policy == "random"
            probes = 8 * want + 64
            chosen: set[int] = set()
            while len(victims) < want:
                if rnd:
                    if not probes or not self.resident:
                        break
                    probes -= 1
                    p = self._rng.randrange(self.npages)
                    s = self.stamp[p]
                    if p in chosen:
                        continue
                elif lru:
                    p, s = lru.popleft()
                else:
                    break
                st = self.state[p]
                if self.stamp[p] != s or not _CACHED <= st <= _PINNED:
                    continue  # stale entry
                if not rnd and self._hot[p] and second_chances > 0:
                    self._hot[p] = 0
                    second_chances -= 1
                    lru.append((p, s))
                    continue
                if self.flags[p] & F_WINDOW:
                    skipped.append((p, s))
                    continue
                if st == _PINNED:
                    if free - 1 < headroom:
                        held_back = True
                        skipped.append((p, s))
                        continue
                    free -= 1
                elif st == _CZ and self.slot[p] < 0:
                    if free < 1:
                        held_back = True
                        skipped.append((p, s))
                        continue
                    free -= 1
                    headroom -= 1
                victims.append(p)
                chosen.add(p)
            if not rnd:
                lru.extendleft(reversed(skipped))
            if held_back:
                self.stats.store_full += 1
            if not victims:
                if held_back:
                    self._log_full(want)
                return None
            victims.sort()
            snapshot = []
            for p in victims:
                st = self.state[p]
                if (st == _PINNED or st == _CZ) and self.slot[p] < 0:
                    self.slot[p] = self.store.allocate(1)[0]
                    if st == _CZ:
                        self._cz_reserved += 1
                if st == _PINNED:
                    snapshot.append(p)
                self.flags[p] = F_WINDOW
            self.epoch += 1
            self.stats.windows += 1
            return Window(victims, snapshot, self.epoch)

    def _log_full(self, want: int) -> None:
        if self.stats.store_full - self._last_full_log >= 1000 or self._last_full_log == 0:
            self._last_full_log = self.stats.store_full
            LOG.error("%s: pages stay resident over the limit", StoreFull(
                want, self.store.free, self.store.capacity))

    def apply_snapshots(self, first: int, count: int, data: memoryview) -> None:
        """Page cache content of pinned pages in a window, read through the mount."""
        with self.lock:
            for k in range(count):
                page = first + k
                # A WRITE in the window already made it CACHED with content at
                # least as new; a later launder will bring anything newer.
                if self.state[page] == _PINNED and self.flags[page] & F_WINDOW:
                    self.store.slot(self.slot[page])[:] = data[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                    self._set(page, _CACHED)

    def abort_pages(self, window: Window, pages: list[int]) -> None:
        """Take pages out of the window before invalidation (e.g. snapshot failed)."""
        drop = set(pages)
        with self.lock:
            for p in pages:
                self.flags[p] = 0
                if self.state[p] == _PINNED or (self.state[p] == _CZ and self.slot[p] >= 0):
                    self._release_slot(p)
                self._lru.appendleft((p, self.stamp[p]))
            window.pages = [p for p in window.pages if p not in drop]
            window.snapshot = [p for p in window.snapshot if p not in drop]

    def end_window(self, window: Window) -> int:
        """The invalidation is done: pages not paged in meanwhile are paged out.

        Returns the number of pages paged out.
        """
        out = 0
        with self.lock:
            for p in window.pages:
                f = self.flags[p]
                self.flags[p] = 0
                st = self.state[p]
                if f & F_READ_IN_WINDOW:
                    if st == _CZ and self.slot[p] >= 0:
                        self._release_slot(p)
                    continue
                if st == _CACHED:
                    if self.store.slot(self.slot[p]).tobytes() == ZERO_PAGE:
                        self._release_slot(p)
                        self._set(p, _ZERO)
                        self.stats.zero_elided += 1
                    else:
                        self._set(p, _STORED)
                        if self.push_enabled:
                            self._push_queue.append(p)
                elif st == _CZ:
                    self._release_slot(p)
                    self._set(p, _ZERO)
                elif st == _PINNED:
                    # Snapshot never applied and nothing laundered: cannot
                    # happen when the caller aborts failed snapshots.
                    LOG.error("page %d left its window still pinned", p)
                    continue
                else:
                    continue
                out += 1
                self._hot[p] = 0
                self._out_seq[p] = self.stats.page_outs + out
            self.stats.page_outs += out
        return out

    # -- introspection --------------------------------------------------------

    def state_counts(self) -> dict[str, int]:
        with self.lock:
            return {s.name.lower(): self.counts[s] for s in PageState}

    def content(self, page: int) -> bytes | None:
        """This host's copy of a page; None when only the page cache or a sub-host has it."""
        with self.lock:
            st = self.state[page]
            if st == _ZERO or st == _CZ:
                return ZERO_PAGE
            if st == _PINNED or st == _REMOTE:
                return None
            return self.store.slot(self.slot[page]).tobytes()

    def page_map(self) -> str:
        """One character per page: where its content is now.

        ``.`` never written, ``R`` resident (page cache), ``L`` paged out to the
        local store, ``1``-``9``/``a``-``z`` held by that sub-host (holder number).
        """
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"
        codes = {_ZERO: ".", _STORED: "L", _CACHED: "R", _CZ: "R", _PINNED: "R"}
        with self.lock:
            state, holder = bytes(self.state), bytes(self.holder)
        return "".join(codes.get(s) or digits[min(h, 35)] for s, h in zip(state, holder,
                                                                            strict=True))

    def release_all(self) -> None:
        """Give every slot back to the store (the RAM file is gone)."""
        with self.lock:
            for p in range(self.npages):
                if self.slot[p] >= 0:
                    self.store.release(self.slot[p])
                    self.slot[p] = -1
            self._cz_reserved = 0
