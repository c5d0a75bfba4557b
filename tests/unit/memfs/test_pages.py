"""The page state machine: transitions, the three measured races, and a model check."""

from __future__ import annotations

import random

import pytest

from nova_ipmigrate.memfs.pages import HERE, PageState, PageTable, Window, contiguous_runs
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import PageStore, StoreFull
from tests.unit.memfs.kernel_model import ZERO, KernelModel, page_value


def test_untouched_pages_read_as_zero_and_become_resident() -> None:
    k = KernelModel(4)
    assert k.load(2) == ZERO
    assert k.table.state[2] == PageState.CACHED_ZERO
    assert k.table.resident == 1 and k.table.stats.page_ins == 1


def test_pin_releases_the_copy_and_eviction_snapshots_it_back() -> None:
    k = KernelModel(8)
    k.store_to(3, 7)
    k.writeback(3)
    assert k.table.state[3] == PageState.CACHED and k.store.used == 1
    k.pin()
    assert k.table.state[3] == PageState.PINNED and k.store.used == 0
    k.writeback(3)  # nothing dirty: no WRITE
    k.store_to(3, 8)
    k.writeback(3)  # outside a window the page cache is authoritative
    assert k.table.stats.writes_discarded == 1
    assert k.evict(8) == 1
    assert k.table.state[3] == PageState.STORED
    assert k.load(3) == page_value(8)
    k.check()
    k.check_slots()


def test_zero_pages_are_elided_on_page_out() -> None:
    k = KernelModel(4)
    k.load(0)
    k.store_to(1, 0)  # page value of tag 0 is all zeros
    k.writeback(1)
    k.pin()
    assert k.evict(4) == 2
    assert k.table.state[0] == PageState.ZERO and k.table.state[1] == PageState.ZERO
    assert k.store.used == 0
    k.check()


def test_race_big_range_read_inside_window_keeps_its_copy() -> None:
    """Race 1: a page paged in after the window opened is dropped by the invalidation."""
    k = KernelModel(8)
    k.store_to(5, 11)
    k.pin()
    w = k.begin(8)
    assert w is not None and 5 in w.pages
    k.snapshot(w)
    k.invalidate([5])            # the kernel drops page 5 ...
    assert k.load(5) == page_value(11)   # ... the guest faults it back in the window
    k.store_to(5, 12)            # and writes it; then the range invalidation reaches it
    k.table.write(5, 0, memoryview(page_value(12)))  # launder of the dirty page
    k.dirty.discard(5)
    k.cache.pop(5)
    k.table.end_window(w)
    # Read in the window: it stayed "resident" with its copy, which is current.
    assert k.table.state[5] == PageState.CACHED
    assert k.load(5) == page_value(12)
    k.check()
    k.check_slots()


def test_race_uptodate_reply_is_not_a_cached_page() -> None:
    """Race 2: eviction starts after a READ reply but before the folio is uptodate."""
    k = KernelModel(8)
    buf = memoryview(bytearray(PAGE_SIZE))
    k.table.read(4, 1, buf)       # reply written; the kernel has not cached it yet
    w = k.begin(8)                # the evictor picks it from the table, not mincore
    assert w is not None and w.pages == [4] and w.snapshot == []
    k.cache[4] = bytearray(buf)   # now the folio becomes uptodate
    k.store_to(4, 3)              # and the guest writes it
    k.snapshot(w)
    k.finish(w)                   # invalidation launders the dirty page
    assert k.load(4) == page_value(3)
    k.check()


def test_race_uptodate_pin_does_not_drop_a_copy_it_did_not_pin() -> None:
    """A pin whose page was evicted and paged in again meanwhile must not drop the copy."""
    k = KernelModel(8)
    k.store_to(1, 9)
    k.writeback(1)
    cands = k.table.pin_candidates(8)
    assert cands == [(1, k.table.stamp[1])]
    k.locked.add(1)
    assert k.evict(8) == 1        # eviction between the populate and pin_done
    k.load(1)                     # paged in again: a new folio, not locked
    k.table.pin_done(cands)
    assert k.table.state[1] == PageState.CACHED, "stale pin must not drop the copy"
    assert k.table.stats.pin_retries == 1
    assert k.reclaim(1)           # reclaim may drop it: the copy is still there
    assert k.load(1) == page_value(9)
    k.check()


def test_race_writeback_inside_window_is_newest_content() -> None:
    """Race 3: writeback of a pinned page inside a window must be kept, not discarded."""
    k = KernelModel(8)
    k.store_to(2, 1)
    k.pin()
    w = k.begin(8)
    assert w is not None and w.snapshot == [2]
    k.store_to(2, 2)
    k.writeback(2)                # WRITE of the newest content while in the window
    assert k.table.state[2] == PageState.CACHED
    k.snapshot(w)                 # snapshot after it: must not regress (it is equal here)
    k.finish(w)
    assert k.load(2) == page_value(2)
    k.check()


def test_writeback_older_than_snapshot_is_superseded_by_launder() -> None:
    k = KernelModel(4)
    k.store_to(0, 1)
    k.pin()
    w = k.begin(4)
    assert w is not None
    old = bytes(k.cache[0])
    k.store_to(0, 2)              # newer data, dirty
    k.snapshot(w)                 # snapshot sees tag 2
    k.table.write(0, 0, memoryview(old))  # a late writeback of tag 1 (captured earlier)
    k.finish(w)                   # the dirty page is laundered with tag 2
    assert k.load(0) == page_value(2)
    k.check()


def test_reclaim_of_unpinned_pages_loses_nothing() -> None:
    k = KernelModel(16)
    for p in range(16):
        k.store_to(p, p + 100)
    for p in range(16):
        assert k.reclaim(p)
    for p in range(16):
        assert k.load(p) == page_value(p + 100)
    assert k.table.stats.refetched == 16
    k.check()


def test_pinned_pages_cannot_be_reclaimed_in_the_model() -> None:
    k = KernelModel(4)
    k.store_to(0, 5)
    k.pin()
    assert not k.reclaim(0)


def test_read_of_a_pinned_page_is_reported_lost() -> None:
    k = KernelModel(4)
    k.store_to(0, 5)
    k.pin()
    k.cache.pop(0)                # the kernel dropped a locked page: must not happen
    k.dirty.discard(0)
    k.load(0)
    assert k.table.stats.lost == 1


def test_full_store_holds_eviction_back_and_loses_nothing() -> None:
    k = KernelModel(16, store_pages=4)
    for p in range(16):
        k.store_to(p, p + 1)
    k.pin()                       # all pinned: each page-out needs a slot
    out = 0
    while (n := k.evict(16)) > 0:
        out += n
    assert out == 4 and k.store.free == 0
    assert k.table.begin_window(16) is None
    assert k.table.stats.store_full >= 1
    for p in range(16):
        assert k.load(p) == page_value(p + 1)
    k.check()
    k.check_slots()


def test_full_store_write_to_untouched_page_raises_and_changes_nothing() -> None:
    k = KernelModel(4, store_pages=1)
    k.table.write(0, 0, memoryview(page_value(1)))
    with pytest.raises(StoreFull):
        k.table.write(1, 0, memoryview(page_value(2)))
    assert k.table.state[1] == PageState.ZERO
    k.check_slots()


def test_cached_zero_pages_keep_headroom_for_their_writeback() -> None:
    """Eviction never takes the last slots a cached-zero page's writeback needs."""
    k = KernelModel(8, store_pages=3)
    for p in range(4):
        k.load(p)                 # four cached-zero pages
    k.store_to(4, 1)              # a dirty page, written back, then pinned
    k.writeback(4)
    k.pin()
    for p in range(4):            # guest writes the zero pages: their writeback needs slots
        k.store_to(p, 10 + p)
    for _ in range(8):
        k.evict(1)
        for p in range(4):
            if p in k.cache:
                k.writeback(p)
    k.check()


def test_partial_write_merges_and_partial_write_to_pinned_window_page_is_refused() -> None:
    k = KernelModel(4)
    k.table.write(1, 8, memoryview(b"\x01" * 8))
    c = k.table.content(1)
    assert c is not None and c[8:16] == b"\x01" * 8 and c[:8] == bytes(8)
    k.truth[1] = c
    k.cache[1] = bytearray(c)
    k.pin()
    w = k.begin(4)
    assert w is not None
    from nova_ipmigrate.memfs.pages import WriteRejected
    with pytest.raises(WriteRejected):
        k.table.write(1, 0, memoryview(b"\x02" * 8))
    k.snapshot(w)
    k.finish(w)
    k.check()


def test_abort_keeps_pages_resident_and_evictable_later() -> None:
    k = KernelModel(4)
    k.store_to(0, 1)
    k.pin()
    w = k.begin(4)
    assert w is not None
    k.table.abort_pages(w, [0])   # e.g. the snapshot read failed
    assert w.pages == [] and k.table.state[0] == PageState.PINNED
    k.table.end_window(w)
    assert k.store.used == 0
    assert k.evict(4) == 1        # still a victim later
    assert k.load(0) == page_value(1)


def test_contiguous_runs() -> None:
    assert contiguous_runs([]) == []
    assert contiguous_runs([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 1), (9, 2)]


def test_victims_are_the_least_recently_paged_in() -> None:
    k = KernelModel(8)
    for p in (5, 1, 7, 3):
        k.load(p)
    w = k.begin(2)
    assert w is not None and w.pages == [1, 5]


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
@pytest.mark.parametrize("seed", range(40))
def test_model_check_random_interleavings(seed: int, remote: bool) -> None:
    """Random guests, reclaim, pins, eviction and push steps interleaved: nothing is lost."""
    rnd = random.Random(seed)
    npages = 24
    k = KernelModel(npages, store_pages=rnd.choice([6, 12, 48]), remote=remote)
    k.table.victim_policy = rnd.choice(["recency", "random"])
    k.table.hot_distance = rnd.choice([1, 4, 16])
    windows: list[tuple[Window, list[int]]] = []   # (window, [next step])
    pushing: tuple[list[tuple[int, int]], list[bytes]] | None = None
    tag = 1
    for _ in range(600):
        op = rnd.random()
        p = rnd.randrange(npages)
        if op < 0.30:
            try:
                k.store_to(p, tag)
            except StoreFull:
                pass
            tag += 1
        elif op < 0.45:
            try:
                k.load(p)
            except StoreFull:
                # No local slot for a page-in from a sub-host: memfs waits for the
                # pusher, then fails the READ; nothing changed.
                assert k.table.state[p] == PageState.REMOTE
        elif op < 0.55:
            try:
                k.writeback(p)
            except StoreFull:
                # A full store refuses the WRITE: the kernel keeps the page dirty.
                pass
        elif op < 0.62:
            try:
                k.reclaim(p)
            except StoreFull:
                pass
        elif op < 0.72:
            k.pin(rnd.randint(1, 6))
        elif op < 0.76:
            if pushing is None:
                pushing = k.push_begin(rnd.randint(1, 6))
            else:
                k.push_end(*pushing, rnd.randint(1, 3))
                pushing = None
        elif op < 0.82 and len(windows) < 2:
            w = k.begin(rnd.randint(1, 8))
            if w is not None:
                windows.append((w, [0]))
        elif windows:
            entry = rnd.choice(windows)
            win, step = entry
            if step[0] == 0:
                k.snapshot(win)
            elif step[0] == 1:
                k.invalidate(win.pages)
            else:
                k.table.end_window(win)
                windows.remove(entry)
            step[0] += 1
        k.check()
    if pushing is not None:
        k.push_end(*pushing, 2)
    for win, step in windows:
        if step[0] == 0:
            k.snapshot(win)
        if step[0] <= 1:
            k.invalidate(win.pages)
        k.table.end_window(win)
    k.check()
    k.check_slots()
    for p in range(npages):
        assert k.load(p) == k.truth.get(p, ZERO)
    assert not k.stale_reads


def test_snapshot_read_before_a_window_writeback_does_not_overwrite_it() -> None:
    """The snapshot pread and its application are not atomic with writeback."""
    k = KernelModel(4)
    k.store_to(0, 1)
    k.pin()
    w = k.begin(4)
    assert w is not None and w.snapshot == [0]
    snap = bytes(k.cache[0])      # pread: tag 1
    k.store_to(0, 2)              # the guest writes tag 2 ...
    k.writeback(0)                # ... and it is written back inside the window (clean now)
    k.table.apply_snapshots(0, 1, memoryview(snap))  # the older snapshot arrives late
    k.finish(w)                   # clean page: dropped without launder
    assert k.load(0) == page_value(2)
    k.check()


def test_paged_out_pages_move_to_a_sub_host_and_come_back() -> None:
    k = KernelModel(8, remote=True)
    for p in range(4):
        k.store_to(p, p + 20)
    k.pin()
    assert k.evict(8) == 4
    k.push(8, holder=3)
    assert all(k.table.state[p] == PageState.REMOTE for p in range(4))
    assert k.store.used == 0 and k.table.holder_of([0, 1]) == [3, 3]
    assert k.load(2) == page_value(22)             # page-in from the sub-host
    assert k.table.stats.remote_page_ins == 1
    k.drops()
    assert 2 not in k.remote[3], "the stale sub-host copy is dropped"
    k.check()
    k.check_slots()


def test_push_overtaken_by_a_page_in_is_not_applied() -> None:
    k = KernelModel(4, remote=True)
    k.store_to(0, 1)
    k.pin()
    k.evict(4)
    cands, data = k.push_begin(4)
    k.store_to(0, 2)                               # paged in and rewritten meanwhile
    k.push_end(cands, data, 1)
    assert k.table.state[0] != PageState.REMOTE
    k.drops()                                      # the pusher's next round
    assert 0 not in k.remote.get(1, {}), "the stale pushed copy is dropped"
    k.writeback(0)
    k.evict(4)
    assert k.load(0) == page_value(2)
    k.check()


def test_full_page_write_replaces_a_remote_page_partial_is_refused() -> None:
    from nova_ipmigrate.memfs.pages import WriteRejected
    k = KernelModel(4, remote=True)
    k.store_to(0, 1)
    k.pin()
    k.evict(4)
    k.push(4)
    with pytest.raises(WriteRejected):
        k.table.write(0, 8, memoryview(b"x" * 8))
    k.table.write(0, 0, memoryview(page_value(5)))
    assert k.table.state[0] == PageState.CACHED
    k.drops()
    assert k.remote[1] == {}


def test_a_page_faulting_back_soon_after_page_out_gets_a_second_chance() -> None:
    k = KernelModel(16)
    k.table.hot_distance = 4
    for p in range(4):
        k.load(p)
    assert k.evict(1) == 1           # page 0 out ...
    k.load(0)                        # ... and straight back: hot
    for p in range(4, 8):
        k.load(p)
    w = k.begin(1)
    assert w is not None and w.pages == [1], "page 0 was skipped once"
    k.finish(w)
    k.check()


def test_random_policy_evicts_resident_pages_only() -> None:
    k = KernelModel(64)
    k.table.victim_policy = "random"
    for p in range(0, 64, 2):
        k.store_to(p, p)
    assert k.evict(8) == 8
    assert all(k.table.state[p] == PageState.ZERO for p in range(1, 64, 2))
    k.check()
    k.check_slots()


def _table(n: int = 16) -> tuple[PageTable, PageStore]:
    store = PageStore(64)
    return PageTable(n, store), store


def test_directory_codes_each_page_by_where_it_is() -> None:
    t, _store = _table()
    buf = memoryview(bytearray(PAGE_SIZE))
    t.read(1, 1, buf)                        # resident (cached zero)
    t.read(2, 1, buf)
    t.write(2, 0, memoryview(b"\x07" * PAGE_SIZE))
    with t.lock:
        t.state[5], t.holder[5] = int(PageState.REMOTE), 3
        t.counts[0] -= 1
        t.counts[int(PageState.REMOTE)] += 1
    codes = t.directory()
    assert len(codes) == 16 and codes[0] == 0 and codes[5] == 3
    assert codes[1] == codes[2] == HERE
    assert sum(1 for c in codes if c) == 3


def test_install_directory_makes_every_written_page_remote() -> None:
    src, _ = _table()
    codes = bytes([0, HERE, 2, 0] * 4)
    dst, _ = _table()
    holder_map = bytearray(256)
    holder_map[HERE], holder_map[2] = 1, 4
    assert dst.install_directory(codes, bytes(holder_map)) == 8
    assert dst.holder_of([1, 2, 3]) == [1, 4, 0]
    assert dst.state_counts()["remote"] == 8 and dst.counts[0] == 8
    assert dst.remote_pages(4) == [(p, 0) for p in range(2, 16, 4)]
    del src


def test_install_directory_refusals_change_nothing() -> None:
    t, _ = _table()
    identity = bytearray(256)
    identity[HERE] = 1
    with pytest.raises(ValueError, match="another size"):
        t.install_directory(bytes(8), bytes(identity))
    with pytest.raises(ValueError, match="code 9 has no holder"):
        t.install_directory(bytes([9]) + bytes(15), bytes(identity))
    t.read(0, 1, memoryview(bytearray(PAGE_SIZE)))      # paged in before the directory
    with pytest.raises(ValueError, match="paged in before"):
        t.install_directory(bytes(16), bytes(identity))
    assert t.state_counts()["remote"] == 0
