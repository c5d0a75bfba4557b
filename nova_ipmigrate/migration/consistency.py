"""The consistency protocol of moving one part of a split VM: every transition in one place.

A *part move* takes the pages one holder (the *source*, a sub-host) holds for a
VM and moves them to a *destination*: another sub-host (a new one, or one that
already holds a part of the VM), or the main host itself (reintegration). The
bulk data goes straight from the source to the destination; the main host's
page directory (:class:`~nova_ipmigrate.memfs.pages.PageTable`) stays the only
authority on where each page is, and the VM keeps paging in and out meanwhile.

:class:`PartMove` is that protocol as a state machine over the directory. Its
methods run under the page table's lock: the page table calls the two hooks
(:meth:`PartMove.page_left`, :meth:`PartMove.page_arrived`) from its own
transitions, the transfer driver (``transfer.py``) calls the others around its
I/O, which it does with no lock held.

Per page of the part (``sent[p]``: the page-in stamp of the copy staged at the
destination, plus one; 0: none)::

    TODO --region copied, unchanged meanwhile--> SENT(stamp)
    SENT --paged in from the source-----------> invalidated (staged copy dropped)
    *    --paged out to the source again------> RESEND (copied again later)
    SENT --switch (atomic, main host)---------> owned by the destination

Rules:

* A region's copy is valid only for the pages whose directory entry (holder =
  source, same page-in stamp) did not change between the copy request and its
  answer; the stamp is monotonic, so "same stamp" means "not paged in
  meanwhile". Other copied pages are invalidated at the destination.
* A page paged out to the source after its region was sent is re-sent: the
  source stays a placement target while the bulk pass runs, and is closed for
  page-outs (:attr:`PageTable.closed_holders`) when the move converges, so the
  re-send set can only shrink.
* Copies land at the destination under a *staging key*, never under the VM:
  a page paged out to the destination meanwhile (as an ordinary holder) can
  never be overwritten by a late bulk copy. Before the switch the destination
  moves the valid staged pages under the VM (commit); then the main host
  switches every page still valid from source to destination in one locked
  step. A committed page that was paged in between commit and switch is not
  switched: its copy at the destination is dropped through the page table's
  drop queue, which the pusher sends before any later push (so the drop can
  never delete a newer copy).
* Staged-copy invalidations and copy requests are issued by one driver thread
  in order, the invalidations taken together with the next region under one
  lock (:meth:`PartMove.next_copy`): an invalidation queued before a copy
  request is sent before it. Regions in flight at once (the driver overlaps
  two) never share a page, and the invalidation of a page whose copy is in
  flight waits until that copy has landed.
* The bulk pass takes every page once; then the move converges (the source
  closed), so a guest paging out to the source faster than the copy cannot
  keep the move going for ever.
* Abort before the switch leaves the source the owner of every page; the
  destination's staged copies are dropped, committed ones too (through the drop
  queue). Nothing the directory points at is ever touched. (A switch round
  that left pages at the source, then an abort: the pages already switched
  stay with the destination, which owns them; nothing is lost.)
* With the main host as destination, a region's valid pages are installed into
  the local store at once (``STORED``, holder 0): the directory switch is per
  region, and nothing else can change them (they are no longer remote).
"""

from __future__ import annotations

import enum
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nova_ipmigrate.memfs.protocol import PAGE_SIZE

if TYPE_CHECKING:
    from nova_ipmigrate.memfs.pages import PageTable

# The page states this module reads (memfs.pages.PageState; no import cycle).
_STORED = 1
_REMOTE = 5

#: holder number of the main host itself as a destination
MAIN_HOST = 0


class Phase(enum.Enum):
    COPYING = "copying"         # bulk pass over the part; the source still takes page-outs
    CONVERGING = "converging"   # source closed for page-outs; re-sending what changed
    SWITCHED = "switched"       # the destination owns the part; done
    ABORTED = "aborted"         # rolled back: the source owns what it owned


class MoveStateError(Exception):
    """A transition that the move's phase does not allow (a driver bug)."""


@dataclass
class MoveCounters:
    part_pages: int = 0      # pages the source held when the move started
    copied: int = 0          # pages the source copied to the destination (all passes)
    valid: int = 0           # copies that were still current on arrival
    resent: int = 0          # pages copied again (paged out to the source after their copy)
    invalidated: int = 0     # staged copies dropped: paged in from the source meanwhile
    missing: int = 0         # pages the source no longer held when asked (paged in)
    switched: int = 0        # pages whose ownership moved to the destination
    installed: int = 0       # pages installed on the main host (destination = main host)
    orphans: int = 0         # committed copies not switched (dropped at the destination)
    page_ins_from_source: int = 0
    page_outs_to_source: int = 0
    regions: int = 0
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class Region:
    """One copy request: (page, stamp) pairs as the directory had them when it was issued."""

    pages: list[int]
    stamps: list[int]
    resend: int = 0   # how many of them had been copied before


class PartMove:
    """The directory side of moving ``source``'s part of one VM to ``dest``.

    ``dest`` is a holder number of the VM (>= 1: a sub-host, already holding a
    part or just added), or :data:`MAIN_HOST`.
    """

    def __init__(self, table: PageTable, source: int, dest: int) -> None:
        if source < 1:
            raise ValueError("the source of a part move is a sub-host (holder >= 1)")
        if dest == source:
            raise ValueError("the destination of a part move must differ from its source")
        self.table = table
        self.source = source
        self.dest = dest
        self.phase = Phase.COPYING
        self.counters = MoveCounters()
        self.sent = array("Q", [0]) * table.npages
        self._todo: list[int] = []     # pages of the part in ascending order, not yet taken
        self._cursor = 0
        self._resend: set[int] = set()  # pages to copy (again) after the bulk pass took them
        self._in_flight: list[Region] = []
        self._flying: set[int] = set()   # pages of the regions in flight
        self._invalidate: list[int] = []
        self._committed: set[int] = set()  # committed at the destination, not yet switched
        self._installing = False

    # -- setup (lock held) --------------------------------------------------------------

    def start(self) -> int:
        """Take the part as the directory has it now; returns its size in pages."""
        t = self.table
        src = self.source
        self._todo = [p for p in range(t.npages)
                      if t.state[p] == _REMOTE and t.holder[p] == src]
        self.counters.part_pages = len(self._todo)
        return len(self._todo)

    # -- hooks from the page table (lock held) ------------------------------------------

    def page_left(self, page: int, holder: int) -> None:
        """``page`` stopped being held by ``holder`` (page-in, or replaced by a write)."""
        if (holder != self.source or self._installing
                or self.phase in (Phase.SWITCHED, Phase.ABORTED)):
            return
        self.counters.page_ins_from_source += 1
        self._resend.discard(page)
        if self.sent[page]:
            self.sent[page] = 0
            self._invalidate.append(page)

    def page_arrived(self, page: int, holder: int) -> None:
        """``page`` was paged out to ``holder`` (the pusher's ACK)."""
        if holder != self.source or self.phase in (Phase.SWITCHED, Phase.ABORTED):
            return
        self.counters.page_outs_to_source += 1
        # Its copy at the destination (if any) was invalidated when it was paged in.
        self._resend.add(page)

    # -- the driver's transitions (lock held) -------------------------------------------

    def _valid(self, page: int) -> bool:
        t = self.table
        return (t.state[page] == _REMOTE and t.holder[page] == self.source
                and self.sent[page] == t.stamp[page] + 1)

    def bulk_done(self) -> bool:
        """Every page of the part was taken once: time to converge."""
        return self._cursor >= len(self._todo)

    def next_copy(self, limit: int, bulk: bool) -> tuple[list[int], Region | None]:
        """Invalidations to send, then the next region to copy: one step, one lock.

        Taken together so that no invalidation can be queued between the two
        and reach the destination after the copy (it could delete the new
        staged copy of its page). ``bulk``: no region once every page of the
        part was taken (the move converges then).
        """
        stale = self.take_invalidations()
        if bulk and self.bulk_done():
            return stale, None
        return stale, self.next_region(limit)

    def take_invalidations(self) -> list[int]:
        """Staged copies at the destination that are stale: drop them before the next copy.

        A page whose copy is in flight stays queued until that copy has landed
        (dropped earlier, the copy would arrive after the drop).
        """
        if self._flying:
            out = [p for p in self._invalidate if p not in self._flying]
            self._invalidate = [p for p in self._invalidate if p in self._flying]
        else:
            out, self._invalidate = self._invalidate, []
        self.counters.invalidated += len(out)
        return out

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def next_region(self, limit: int) -> Region | None:
        """The next pages to copy (at most ``limit``), or None when nothing is left to copy.

        Regions in flight at the same time never share a page: a page is copied
        again only once its previous copy has landed and been judged.
        """
        if self.phase not in (Phase.COPYING, Phase.CONVERGING):
            raise MoveStateError(f"no copying in phase {self.phase.value}")
        t = self.table
        src = self.source
        pages: list[int] = []
        todo = self._todo
        while self._cursor < len(todo) and len(pages) < limit:
            p = todo[self._cursor]
            self._cursor += 1
            if t.state[p] == _REMOTE and t.holder[p] == src and not self._valid(p):
                pages.append(p)
        resend = 0
        if len(pages) < limit and self._resend and self._cursor >= len(todo):
            more = sorted(p for p in self._resend if p not in self._flying)
            for p in more[:limit - len(pages)]:
                self._resend.discard(p)
                if t.state[p] == _REMOTE and t.holder[p] == src and not self._valid(p):
                    pages.append(p)
                    resend += 1
        if not pages:
            return None
        pages.sort()
        region = Region(pages, [t.stamp[p] for p in pages], resend)
        self._in_flight.append(region)
        self._flying.update(pages)
        return region

    def _landed(self, region: Region, what: str) -> None:
        if not any(r is region for r in self._in_flight):
            raise MoveStateError(f"{what} of a region that is not in flight")
        self._in_flight = [r for r in self._in_flight if r is not region]
        self._flying.difference_update(region.pages)

    def region_done(self, region: Region, missing: Sequence[int],
                    staged: dict[int, bytes] | None = None) -> list[int]:
        """The source answered a copy request; ``missing``: pages it did not hold.

        With the main host as destination, ``staged`` holds the copies that
        arrived here; valid ones are installed into the local store at once.
        Returns the pages that became current at the destination.
        """
        self._landed(region, "answer")
        if self.phase is Phase.ABORTED:
            return []
        t = self.table
        gone = set(missing)
        c = self.counters
        c.regions += 1
        c.missing += len(gone)
        c.resent += region.resend
        good: list[int] = []
        for p, stamp in zip(region.pages, region.stamps, strict=True):
            if p in gone:
                continue
            c.copied += 1
            still = t.state[p] == _REMOTE and t.holder[p] == self.source and t.stamp[p] == stamp
            if not still:
                # Paged in (and maybe out again) while its copy was on the way.
                self._invalidate.append(p)
                if t.state[p] == _REMOTE and t.holder[p] == self.source:
                    self._resend.add(p)
                continue
            if self.dest == MAIN_HOST:
                data = staged.get(p) if staged is not None else None
                if data is None:
                    self._resend.add(p)
                    continue
                self._install(p, stamp, data)
            else:
                self.sent[p] = stamp + 1
            good.append(p)
        c.valid += len(good)
        return good

    def region_failed(self, region: Region) -> None:
        """The copy request failed: its pages may or may not be staged; copy them again."""
        self._landed(region, "failure")
        for p in region.pages:
            self._invalidate.append(p)
            self._resend.add(p)

    def _install(self, page: int, stamp: int, data: bytes) -> None:
        """Destination = main host: the page comes home into the local store."""
        # StoreFull propagates with nothing changed; the page-left hook (below us)
        # sees a page of our own source leave: it is ours, nothing is staged for it.
        self._installing = True
        try:
            done = self.table.bring_home(page, data, self.source, stamp)
        finally:
            self._installing = False
        if done:
            self.counters.installed += 1
            self.counters.switched += 1

    def converge(self) -> None:
        """End of the bulk pass: the source takes no more page-outs; re-send what changed."""
        if self.phase is not Phase.COPYING:
            raise MoveStateError(f"cannot converge in phase {self.phase.value}")
        self.phase = Phase.CONVERGING
        self.table.closed_holders.add(self.source)

    def commit_set(self) -> list[int]:
        """Pages to commit at the destination before the switch: every current copy."""
        if self.phase is not Phase.CONVERGING:
            raise MoveStateError(f"no commit in phase {self.phase.value}")
        if self._in_flight:
            raise MoveStateError("no commit while copies are in flight")
        if self.dest == MAIN_HOST:
            return []
        t = self.table
        src = self.source
        return [p for p in range(t.npages) if t.state[p] == _REMOTE and t.holder[p] == src
                and self._valid(p) and p not in self._committed]

    def committed(self, pages: Sequence[int]) -> None:
        """The destination moved ``pages`` from staging under the VM."""
        self._committed.update(pages)

    def switch(self) -> int:
        """The atomic ownership switch in the directory; returns pages still at the source.

        Every committed page that is still current moves to the destination.
        A committed page that changed since is an orphan at the destination:
        its copy there is dropped (unless the destination owns the page by now,
        through an ordinary page-out, whose copy replaced it). Pages the
        source still holds that were not switched are re-sent; when none are
        left the move is done and the source is empty for this VM.
        """
        if self.phase is not Phase.CONVERGING:
            raise MoveStateError(f"no switch in phase {self.phase.value}")
        if self._in_flight:
            raise MoveStateError("no switch while copies are in flight")
        t = self.table
        dst = self.dest
        c = self.counters
        for p in sorted(self._committed):
            if self._valid(p):
                t.holder[p] = dst
                c.switched += 1
            elif not (t.state[p] == _REMOTE and t.holder[p] == dst):
                t._drop_queue.append((dst, p))
                c.orphans += 1
            self.sent[p] = 0
        self._committed.clear()
        left = self.left_at_source()
        for p in left:
            self._resend.add(p)
        if not left:
            self.phase = Phase.SWITCHED
        return len(left)

    def left_at_source(self) -> list[int]:
        """Pages the directory says the source still holds."""
        t = self.table
        src = self.source
        return [p for p in range(t.npages) if t.state[p] == _REMOTE and t.holder[p] == src]

    def finish_local(self) -> int:
        """Destination = main host: done when the source holds nothing; pages left there."""
        if self.dest != MAIN_HOST:
            raise MoveStateError("finish_local is for moves to the main host")
        left = self.left_at_source()
        self._resend.update(left)
        if not left:
            self.phase = Phase.SWITCHED
        return len(left)

    def abort(self) -> list[int]:
        """Roll back: the source stays owner of every page it holds.

        Returns the pages committed at the destination but never switched:
        the caller has them dropped there (queued here through the drop queue,
        ordered before any later push). Staged copies are the caller's to drop
        (the whole staging key at once).
        """
        if self.phase is Phase.SWITCHED:
            raise MoveStateError("the move is complete: nothing to roll back")
        t = self.table
        orphans = []
        for p in sorted(self._committed):
            if not (t.state[p] == _REMOTE and t.holder[p] == self.dest):
                t._drop_queue.append((self.dest, p))
                orphans.append(p)
        self._committed.clear()
        self.counters.orphans += len(orphans)
        self.phase = Phase.ABORTED
        t.closed_holders.discard(self.source)
        self._invalidate.clear()
        self._resend.clear()
        return orphans

    # -- progress -------------------------------------------------------------------------

    def progress(self) -> dict[str, object]:
        c = self.counters
        elapsed = max(1e-9, time.monotonic() - c.started_at)
        total = c.part_pages + c.resent
        # Done: every page of the part is at the destination, or came back to the
        # main host through a page-in meanwhile (nothing left to move either way).
        done = total if self.phase is Phase.SWITCHED else min(c.copied, total)
        rate = c.copied * PAGE_SIZE / elapsed
        left = max(0, total - c.copied)
        return {
            "phase": self.phase.value,
            "pages_total": total, "pages_done": done,
            "bytes_total": total * PAGE_SIZE, "bytes_done": done * PAGE_SIZE,
            "part_pages": c.part_pages, "copied": c.copied, "valid": c.valid,
            "resent": c.resent, "invalidated": c.invalidated, "missing": c.missing,
            "switched": c.switched, "installed": c.installed, "orphans": c.orphans,
            "page_ins_from_source": c.page_ins_from_source,
            "page_outs_to_source": c.page_outs_to_source, "regions": c.regions,
            "elapsed_s": round(elapsed, 3), "rate_bytes_s": round(rate),
            "eta_s": round(left * PAGE_SIZE / rate, 1) if rate > 0 and left else 0.0,
        }
