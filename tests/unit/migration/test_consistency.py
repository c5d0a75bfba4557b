"""PartMove's transitions, one at a time, around a real PageTable (tests/unit/migration/world.py).

The last section replays races found while building the model check
(``test_model.py``): four fixed in e79029f (regression tests now), and
``test_bug_late_invalidation_deletes_a_valid_staged_copy``, which fails on
purpose until that race is fixed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Collection, Sequence

import pytest

from nova_ipmigrate.memfs.pager import Pager, PagerConfig
from nova_ipmigrate.memfs.pages import PageState, PageTable
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import PageStore
from nova_ipmigrate.migration.consistency import (
    MAIN_HOST,
    MoveStateError,
    PartMove,
    Phase,
)
from tests.unit.memfs.kernel_model import ZERO
from tests.unit.migration.world import World

REMOTE, STORED = PageState.REMOTE, PageState.STORED


def _world(src_pages: Sequence[int] = (0, 1, 2, 3), dest_pages: Sequence[int] = (6,),
           npages: int = 16) -> World:
    """Holder 1 holds ``src_pages``, holder 2 ``dest_pages``; nothing else remote."""
    w = World(npages, holders=3)
    w.place(list(src_pages), 1)
    if dest_pages:
        w.place(list(dest_pages), 2)
    w.check_all()
    return w


def _evict(w: World, pages: Sequence[int]) -> None:
    """Page ``pages`` (resident) out to the local store, nothing else."""
    w.evict_only(list(pages))
    assert all(w.table.state[p] == STORED for p in pages)


def _rewrite_and_push(w: World, p: int, *, put: bool = True, done: bool = True) -> int:
    """Page-in ``p``, write it, page it out and push it (to whichever holder is open)."""
    w.store_to(p, w.next_tag())
    _evict(w, [p])
    assert w.push_begin(1)
    assert w.pushing is not None
    holder = w.pushing.holder
    if put:
        w.push_put()
        if done:
            w.push_finish()
    return holder


def _bulk(w: World) -> None:
    """The driver up to the end of the bulk pass (every page taken once, not converged)."""
    d = w.drv
    assert d is not None
    while d.pc != "converge":
        w.step()


def _to_commit_set(w: World) -> list[int]:
    """Converge, and copy until the commit set is taken."""
    d = w.drv
    assert d is not None
    _bulk(w)
    w.converge()
    while d.pc not in ("commit", "switch"):
        w.step()
    return d.commit


def _readable(w: World) -> None:
    w.check_all()
    for p in range(w.npages):
        assert w.load(p) == w.truth.get(p, ZERO), f"page {p}"
    w.check_all()


# -- setup and regions -------------------------------------------------------------------------


def test_start_takes_the_part_as_the_directory_has_it() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    assert d.move.counters.part_pages == 4 and d.move.phase is Phase.COPYING
    assert w.table.moves == [d.move]
    with pytest.raises(ValueError):
        PartMove(w.table, MAIN_HOST, 2)
    with pytest.raises(ValueError):
        PartMove(w.table, 1, 1)


def test_region_is_valid_only_for_pages_whose_entry_did_not_change() -> None:
    w = _world()
    d = w.start_move(1, 2, region_pages=8, depth=1)
    w.flush()
    region = w.next_region()
    assert region is not None and region.pages == [0, 1, 2, 3]
    w.copy_some()
    # While the answer is on its way: 0 is paged in; 1 paged in and out to the
    # source again (same holder, new stamp); 3 rewritten by write(2).
    w.load(0)
    assert _rewrite_and_push(w, 1) == 1
    w.write_remote(3)
    good = w.region_done()
    assert good == [2]
    m = d.move
    assert m.sent[2] == w.table.stamp[2] + 1 and not m.sent[0] and not m.sent[1]
    assert 1 in m._resend and 0 not in m._resend
    assert sorted(w.flush()) == [0, 1, 3]        # stale staged copies dropped at D
    assert sorted(w.staging[d.key]) == [2]
    assert m.counters.copied == 4 and m.counters.valid == 1
    assert w.next_region() is None and m.bulk_done()
    w.converge()                                 # re-sends happen with the source closed
    w.flush()
    region = w.next_region()                     # page 1 again, as a re-send
    assert region is not None and region.pages == [1] and region.resend == 1
    w.copy_some()
    assert w.region_done() == [1]
    w.check_all()


def test_pages_the_source_no_longer_holds_are_reported_missing() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    w.flush()
    assert w.next_region() is not None
    w.load(2)
    w.drops()                                    # the source forgot page 2 before the copy
    w.copy_some()
    assert d.flying[0].missing == [2]
    assert sorted(w.region_done()) == [0, 1, 3]
    assert d.move.counters.missing == 1 and d.move.counters.copied == 3
    w.check_all()


def test_page_in_of_a_sent_page_queues_its_invalidation() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _bulk(w)
    assert sorted(w.staging[d.key]) == [0, 1, 2, 3]
    w.load(1)
    assert d.move.sent[1] == 0 and d.move.counters.page_ins_from_source == 1
    assert d.move.take_invalidations() == [1]
    assert d.move.counters.invalidated == 1
    w.write_remote(2)                            # write(2) replaces it: same hook
    assert d.move.take_invalidations() == [2]


def test_page_out_to_the_source_while_copying_is_resent() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _bulk(w)
    assert _rewrite_and_push(w, 0) == 1          # the source still takes page-outs
    assert d.move.counters.page_outs_to_source == 1 and 0 in d.move._resend
    w.converge()                                 # (it arrived before the bulk pass ended)
    assert w.flush() == [0]
    region = w.next_region()
    assert region is not None and region.pages == [0] and region.resend == 1
    w.copy_some()
    assert w.region_done() == [0]
    assert d.move.counters.resent == 1
    w.check_all()


def test_page_out_to_the_source_of_a_page_outside_the_part_is_sent_too() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    w.store_to(9, w.next_tag())
    _evict(w, [9])
    assert w.push_begin(1, pick=0) and w.pushing is not None and w.pushing.holder == 1
    w.push_put()
    w.push_finish()
    assert 9 in d.move._resend
    assert _to_commit_set(w) == [0, 1, 2, 3, 9]
    assert 9 in w.staging[d.key] and d.move.sent[9]


def test_region_failed_invalidates_and_resends_its_pages() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    w.flush()
    region = w.next_region()
    assert region is not None
    w.copy_some(2)                               # half of it staged, then the link fails
    with w.table.lock:
        d.move.region_failed(region)
    assert sorted(d.move.take_invalidations()) == region.pages
    assert d.move._resend == set(region.pages)
    with pytest.raises(MoveStateError):
        d.move.region_failed(region)


# -- converge, commit, switch ------------------------------------------------------------------


def test_converge_closes_the_source_and_undoes_a_push_to_it_in_flight() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _bulk(w)
    w.store_to(9, w.next_tag())
    _evict(w, [9])
    assert w.push_begin(1, pick=0)                # chosen while the source was open
    assert w.pushing is not None and w.pushing.holder == 1
    w.converge()
    assert 1 in w.table.closed_holders and w.open_holders() == [2, 3]
    w.push_put()
    w.push_finish()                               # refused: the page stays here
    assert w.table.state[9] == STORED and w.table.stats.remote_refused == 1
    assert d.move.counters.page_outs_to_source == 0
    w.drops()
    assert 9 not in w.remote[1], "the refused copy is dropped at the closed source"
    assert w.push_begin(1, pick=0) and w.pushing is not None and w.pushing.holder == 2
    w.push_put()
    w.push_finish()
    assert w.table.state[9] == REMOTE and w.table.holder[9] == 2
    w.check_all()
    with pytest.raises(MoveStateError):
        d.move.converge()


def test_commit_then_switch_moves_every_valid_page_at_once() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    assert _to_commit_set(w) == [0, 1, 2, 3]
    assert w.dest_commits()
    assert all(w.table.holder[p] == 1 for p in range(4)), "nothing moves before the switch"
    assert w.staging[d.key] == {}
    w.check_all()
    assert w.switch() == 0
    assert d.move.phase is Phase.SWITCHED
    assert [w.table.holder[p] for p in range(4)] == [2, 2, 2, 2]
    assert d.move.counters.switched == 4 and d.move.counters.orphans == 0
    w.cleanup()
    assert w.remote[1] == {} and 1 in w.table.closed_holders
    _readable(w)


def test_page_in_between_commit_and_switch_is_an_orphan_dropped_at_the_destination() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    w.load(1)                                   # paged in from the source, after the commit
    assert w.switch() == 0
    assert d.move.counters.switched == 3 and d.move.counters.orphans == 1
    assert w.table.state[1] == PageState.CACHED
    assert (2, 1) in w.table._drop_queue
    w.drops()
    assert 1 not in w.remote[2], "the orphan copy is dropped at the destination"
    w.cleanup()
    _readable(w)


def test_page_paged_out_to_the_destination_after_the_commit_is_not_dropped() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    assert _rewrite_and_push(w, 1) == 2         # ordinary page-out to D replaces the commit
    assert w.switch() == 0
    assert d.move.counters.orphans == 0
    assert (2, 1) not in w.table._drop_queue
    w.drops()
    w.cleanup()
    _readable(w)


def test_switch_with_pages_left_at_the_source_sends_them_again() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    # A page the source holds that is not valid at the switch (a region copy
    # of it still counted as sent is forgotten: as after a late page-out).
    d.move.sent[3] = 0
    assert w.switch() == 1
    assert d.move.phase is Phase.CONVERGING and w.table.holder[3] == 1
    assert d.move.counters.orphans == 1 and (2, 3) in w.table._drop_queue
    w.drops()
    w.flush()
    region = w.next_region()
    assert region is not None and region.pages == [3]
    w.copy_some()
    w.region_done()
    w.flush()
    assert w.next_region() is None
    assert w.commit_set() == [3]
    assert w.dest_commits()
    assert w.switch() == 0
    w.cleanup()
    _readable(w)


def test_a_new_destination_takes_no_page_outs_until_it_owns_the_part() -> None:
    w = _world(dest_pages=())
    w.start_move(1, 3, new_dest=True, depth=1)
    assert 3 in w.table.closed_holders
    _bulk(w)
    assert _rewrite_and_push(w, 0) == 1
    w.converge()
    assert _rewrite_and_push(w, 1) == 2
    w.flush()
    region = w.next_region()
    assert region is not None and region.pages == [0]
    w.copy_some()
    w.region_done()
    w.flush()
    assert w.next_region() is None
    assert w.commit_set() == [0, 2, 3]
    assert w.dest_commits()
    assert w.switch() == 0
    w.cleanup()
    assert 3 not in w.table.closed_holders
    _readable(w)


# -- abort -------------------------------------------------------------------------------------


def test_abort_while_copying_leaves_the_source_owner_of_everything() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    w.flush()
    assert w.next_region() is not None
    w.copy_some(2)
    assert w.abort() == []                      # the copy failed: region_failed, abort
    assert d.move.phase is Phase.ABORTED and d.key not in w.staging
    assert all(w.table.holder[p] == 1 for p in range(4))
    assert w.table.moves == []
    # The hooks ignore an aborted move.
    w.load(0)
    assert d.move.take_invalidations() == []
    _readable(w)


def test_abort_after_commit_returns_the_orphans_and_queues_their_drops() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    assert 1 in w.table.closed_holders
    orphans = w.abort()
    assert orphans == [0, 1, 2, 3] and d.move.counters.orphans == 4
    assert 1 not in w.table.closed_holders, "the source takes page-outs again"
    assert all(w.table.holder[p] == 1 for p in range(4))
    assert sorted(p for h, p in w.table._drop_queue if h == 2) == [0, 1, 2, 3]
    w.drops()
    assert sorted(w.remote[2]) == [6], "the committed copies are gone, D's own page stays"
    _readable(w)
    with pytest.raises(MoveStateError):
        d.move.next_region(4)


def test_abort_keeps_a_committed_page_the_destination_owns_by_page_out() -> None:
    w = _world()
    w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    assert _rewrite_and_push(w, 2) == 2
    assert w.abort() == [0, 1, 3]
    w.drops()
    _readable(w)


def test_a_region_answered_after_the_abort_changes_nothing() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    w.flush()
    region = w.next_region()
    assert region is not None
    with w.table.lock:
        d.move.abort()
        assert d.move.region_done(region, []) == []
    assert d.move.counters.copied == 0


def test_abort_after_the_switch_is_refused() -> None:
    w = _world()
    d = w.run_move(1, 2)
    assert d.pc == "done"
    with pytest.raises(MoveStateError):
        d.move.abort()


# -- the main host as destination -------------------------------------------------------------


def test_move_to_the_main_host_installs_pages_into_the_local_store() -> None:
    w = _world()
    d = w.start_move(1, MAIN_HOST, depth=1)
    w.flush()
    region = w.next_region()
    assert region is not None and region.pages == [0, 1, 2, 3]
    w.copy_some()
    w.load(1)                                    # paged in while its copy was on the way
    assert w.region_done() == [0, 2, 3]
    for p in (0, 2, 3):
        assert w.table.state[p] == STORED and w.table.holder[p] == 0
        assert (1, p) in w.table._drop_queue
    assert d.move.counters.installed == 3 and d.move.counters.switched == 3
    assert d.move.take_invalidations() == [1]
    assert d.move.counters.page_ins_from_source == 1, "installing is not a page-in"
    w.drops()
    _bulk(w)
    w.converge()
    w.flush()
    assert w.next_region() is None
    assert d.move.commit_set() == []
    assert w.finish_local() == 0 and d.move.phase is Phase.SWITCHED
    w.cleanup()
    assert w.table.holders() == {0: 4, 2: 1}
    _readable(w)


def test_move_to_the_main_host_resends_a_page_whose_copy_did_not_arrive() -> None:
    w = _world()
    d = w.start_move(1, MAIN_HOST, depth=1)
    w.flush()
    assert w.next_region() is not None
    w.copy_some()
    del w.staging[d.key][2]                      # lost on the way (LocalStaging.take: absent)
    assert w.region_done() == [0, 1, 3]
    assert d.move._resend == {2} and w.table.state[2] == REMOTE
    _bulk(w)
    w.converge()
    w.flush()
    region = w.next_region()
    assert region is not None and region.pages == [2] and region.resend == 1
    w.copy_some()
    assert w.region_done() == [2]
    w.flush()
    assert w.next_region() is None
    assert w.finish_local() == 0
    w.cleanup()
    _readable(w)


def test_move_to_the_main_host_with_a_full_store_rolls_back() -> None:
    w = World(16, store_pages=6)
    w.place([0, 1, 2, 3], 1)
    w.place([4, 5, 6, 7], 2)
    for p in range(8, 14):
        w.store_to(p, w.next_tag())               # six resident pages: the store is full
        w.writeback(p)
    assert w.store.free == 0
    d = w.start_move(1, MAIN_HOST, depth=1)
    w.flush()
    assert w.next_region() is not None
    w.copy_some()
    assert w.region_done() == [] and d.pc == "aborted"
    assert all(w.table.holder[p] == 1 for p in range(4))
    w.check_all()


def test_finish_local_is_only_for_moves_to_the_main_host() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    with pytest.raises(MoveStateError):
        d.move.finish_local()


# -- phases and progress ---------------------------------------------------------------------


def test_out_of_phase_calls_raise() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=2)
    m = d.move
    with pytest.raises(MoveStateError):
        m.commit_set()
    with pytest.raises(MoveStateError):
        m.switch()
    r1 = m.next_region(2)
    r2 = m.next_region(2)                         # two regions in flight, disjoint
    assert r1 is not None and r2 is not None and not set(r1.pages) & set(r2.pages)
    assert m.in_flight == 2 and m.bulk_done()
    other = type(r1)(list(r1.pages), list(r1.stamps))
    with pytest.raises(MoveStateError):
        m.region_done(other, [])                  # not one in flight
    m.region_done(r1, [])
    with pytest.raises(MoveStateError):
        m.region_done(r1, [])                     # answered twice
    m.converge()
    with pytest.raises(MoveStateError):
        m.converge()
    with pytest.raises(MoveStateError):
        m.commit_set()                            # r2 still in flight
    with pytest.raises(MoveStateError):
        m.switch()
    m.region_done(r2, [])
    assert m.commit_set() == [0, 1, 2, 3]
    m.abort()
    for call in (lambda: m.next_region(1), m.commit_set, m.switch, m.converge):
        with pytest.raises(MoveStateError):
            call()


def test_invalidations_of_pages_in_flight_wait_until_they_landed() -> None:
    w = _world()
    d = w.start_move(1, 2, depth=1)
    _bulk(w)
    w.load(0)                                     # invalidation of 0 queued
    w.converge()
    w.flush()
    assert d.move.take_invalidations() == []
    assert _rewrite_and_push(w, 0) == 2           # (source closed: elsewhere)
    assert w.table.holder[0] == 2
    # A region in flight holds back the invalidations of its pages.
    w2 = _world()
    d2 = w2.start_move(1, 2, depth=1)
    w2.flush()
    region = w2.next_region()
    assert region is not None
    w2.copy_some()
    with w2.table.lock:
        d2.move._invalidate.append(1)
        assert d2.move.take_invalidations() == []
    w2.region_done()
    assert d2.move.take_invalidations() == [1]


def test_progress_numbers() -> None:
    w = _world(src_pages=range(8), dest_pages=(12,))
    d = w.start_move(1, 2, region_pages=4, depth=1)
    m = d.move
    p = m.progress()
    assert (p["phase"], p["pages_total"], p["pages_done"], p["part_pages"]) == (
        "copying", 8, 0, 8)
    w.flush()
    w.next_region()
    w.copy_some()
    w.load(0)
    w.region_done()
    p = m.progress()
    assert (p["copied"], p["valid"], p["pages_done"], p["regions"]) == (4, 3, 4, 1)
    assert p["bytes_total"] == 8 * PAGE_SIZE and p["bytes_done"] == 4 * PAGE_SIZE
    assert p["page_ins_from_source"] == 1 and p["rate_bytes_s"] > 0 and p["eta_s"] >= 0
    _bulk(w)
    assert _rewrite_and_push(w, 5) == 1            # re-sent: the total grows
    w.converge()
    w.flush()
    w.next_region()
    w.copy_some()
    w.region_done()
    p = m.progress()
    assert (p["resent"], p["pages_total"], p["copied"], p["invalidated"]) == (1, 9, 9, 2)
    w.flush()
    w.next_region()
    w.commit_set()
    w.dest_commits()
    w.switch()
    p = m.progress()
    assert p["phase"] == "switched" and p["pages_done"] == p["pages_total"] == 9
    assert p["switched"] == 7 and p["eta_s"] == 0.0


# -- races found by the model (the first four fixed in e79029f; the last one still open) -------


def test_commit_keeps_a_page_out_to_the_destination_made_after_commit_set() -> None:
    """commit_set -> page-in, rewrite, page-out to D -> D commits: the newer copy stays.

    A page in the commit set is paged in from the source after commit_set and
    paged out again; the pusher picks the destination (an existing holder,
    open for page-outs) and push_done makes it REMOTE at D with the new copy.
    Then the destination's commit_pages moves the staged (old) copy under the
    VM, replacing the new one; the switch sees the page REMOTE at D and leaves
    it: the directory pointed at D's stale copy. The sub-host store's put
    sequence numbers now keep the newer copy.
    """
    w = _world()
    w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert _rewrite_and_push(w, 1) == 2           # after commit_set, before the commit
    assert w.dest_commits()
    w.switch()
    current = w.remote[2][1] == w.truth[1]
    assert current, (
        "the destination's commit replaced a newer page-out to it with the staged copy; "
        "the directory points at the stale copy")


def test_orphan_drop_spares_a_push_in_flight_to_the_destination() -> None:
    """commit -> page-in, rewrite, push to D put -> switch -> push_done -> drops: kept.

    A committed page is paged in from the source and paged out again; its push
    to the destination is on the way (put done, push_done not yet) when the
    switch runs: the page is STORED, so the switch queues an orphan drop for
    (D, page). push_done then makes it REMOTE at D, and the pusher's next round
    sent the drop, deleting the only copy of the page. push_done now forgets
    the queued drops of the pages it places.
    """
    w = _world()
    w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    assert _rewrite_and_push(w, 1, done=False) == 2
    w.switch()
    w.push_finish()
    w.drops()
    held = 1 in w.remote[2]
    assert held, (
        "the orphan drop queued by switch() deleted the copy of a push to the "
        "destination that was in flight; the directory points at a page D no longer holds")


def test_abort_orphan_drop_spares_a_push_in_flight_to_the_destination() -> None:
    """Same as above with abort() instead of switch() queueing the orphan drop."""
    w = _world()
    w.start_move(1, 2, depth=1)
    _to_commit_set(w)
    assert w.dest_commits()
    assert _rewrite_and_push(w, 1, done=False) == 2
    w.abort()
    w.push_finish()
    w.drops()
    held = 1 in w.remote[2]
    assert held, (
        "the orphan drop queued by abort() deleted the copy of a push to the "
        "destination that was in flight; the directory points at a page D no longer holds")


class _Remote:
    """FabricRemotePaging's interface for pager.push_some: one dict per holder."""

    def __init__(self, holder: int) -> None:
        self.holder = holder
        self.held: dict[int, dict[int, bytes]] = {}

    def drop(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> None:
        for p in pages:
            self.held.get(holder, {}).pop(p, None)

    def push(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[memoryview],
             exclude: Collection[int] = ()) -> int:
        held = self.held.setdefault(self.holder, {})
        for p, d in zip(pages, data, strict=True):
            held[p] = bytes(d)
        return self.holder

    def holder_name(self, holder: int) -> str:
        return f"sub{holder}"


class _Ram:
    def __init__(self, table: PageTable, remote: _Remote) -> None:
        self.table, self.remote, self.vm = table, remote, uuid.uuid4()
        self.quiet = self.frozen = False
        self.pager_lock = threading.Lock()


def test_pusher_sends_every_queued_drop_before_its_next_push() -> None:
    """The drop queue must reach a holder before any later push to it (consistency.py).

    pager.push_some sent at most take_drops()'s default 4096 drops, then
    pushed. With more drops queued, a page whose drop was still queued could be
    pushed to that holder again, and the drop, sent next round, deleted the new
    copy. take_drops now takes them all.
    """
    n = 4100
    table = PageTable(n, PageStore(n))
    table.push_enabled = True
    remote = _Remote(1)
    ram = _Ram(table, remote)
    pager = Pager(PagerConfig(pin=False), lambda: [], lambda msg: None, "/nonexistent")
    buf = memoryview(bytearray(n * PAGE_SIZE))
    for p in range(n):
        table.write(p, 0, memoryview((p + 1).to_bytes(8, "little") * (PAGE_SIZE // 8)))
    win = table.begin_window(n)
    assert win is not None
    table.end_window(win)
    pager.push_some(ram, buf)                     # every page at holder 1
    assert table.holders() == {1: n}
    for p in range(n):                            # a burst of page-ins: n drops queued
        assert table.fill_remote(p, remote.held[1][p], 1)
    last = n - 1
    new = b"\xee" * PAGE_SIZE
    table.write(last, 0, memoryview(new))         # the last one rewritten and paged out
    win = table.begin_window(n)
    assert win is not None
    table.abort_pages(win, [p for p in win.pages if p != last])
    table.end_window(win)
    pager.push_some(ram, memoryview(bytearray(PAGE_SIZE)))  # drops (4096 of them), push
    pager.push_some(ram, memoryview(bytearray(PAGE_SIZE)))  # the rest of the drops
    assert table.state[last] == REMOTE and table.holder[last] == 1
    held = remote.held.get(1, {}).get(last) == new
    assert held, (
        "a drop queued before a push reached the holder after it and deleted the "
        "pushed copy (pager.push_some sends only take_drops()'s first 4096 drops)")


def test_late_invalidation_never_deletes_a_valid_staged_copy() -> None:
    """flush -> page-in of a sent page, page-out to the source -> next region.

    Found by this test when transfer.py flushed invalidations and took the next
    region in two locked steps: a sent page paged in between them queued its
    invalidation after the flush; paged out to the source again (still open:
    the bulk pass), it was re-sent in the last region of the bulk pass, copied
    and valid again, and the next flush then deleted that new staged copy (the
    commit failed and the move rolled back). ``PartMove.next_copy`` now takes
    the invalidations and the next region under one lock.
    """
    w = _world(src_pages=(0, 1, 2, 3, 4))
    d = w.start_move(1, 2, region_pages=4, depth=1)
    w.flush()
    w.next_region()
    w.copy_some()
    assert w.region_done() == [0, 1, 2, 3]
    assert w.flush() == []                       # nothing to invalidate yet
    assert d.pc == "ready"
    assert _rewrite_and_push(w, 1) == 1          # between the flush and next_region
    # (As it is: next_region takes [1, 4], 1 as a re-send; its copy lands valid;
    # the next flush sends the invalidation of 1 and deletes that copy.)
    while d.pc not in ("done", "aborted"):       # nothing else interleaved
        w.step()
    assert d.pc == "done", (
        "an invalidation queued before a copy request was sent after it and deleted "
        f"the valid staged copy of page 1: the commit failed and the move rolled back "
        f"(invalidated {d.move.counters.invalidated}, orphans {d.move.counters.orphans})")
    assert [w.table.holder[p] for p in range(5)] == [2] * 5
    _readable(w)
