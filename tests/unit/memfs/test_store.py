"""Tests of the local page store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import ZERO_PAGE, PageStore, StoreFull


@pytest.fixture
def store() -> Iterator[PageStore]:
    s = PageStore(4)
    yield s
    s.close()


def test_zero_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        PageStore(0)


def test_allocate_and_release(store: PageStore) -> None:
    assert (store.capacity, store.free, store.used) == (4, 4, 0)
    a = store.allocate(1)
    b = store.allocate(2)
    assert len(a) == 1 and len(b) == 2
    assert len(set(a + b)) == 3
    assert all(0 <= s < 4 for s in a + b)
    assert (store.free, store.used) == (1, 3)
    for s in b:
        store.release(s)
    assert (store.free, store.used) == (3, 1)
    again = store.allocate(3)
    assert set(again) | set(a) == {0, 1, 2, 3}
    assert store.free == 0


def test_allocate_zero(store: PageStore) -> None:
    assert store.allocate(0) == []
    assert store.free == 4


def test_released_slot_is_reused_first(store: PageStore) -> None:
    (s,) = store.allocate(1)
    store.release(s)
    assert store.allocate(1) == [s]


def test_store_full_changes_nothing(store: PageStore) -> None:
    taken = store.allocate(3)
    with pytest.raises(StoreFull) as info:
        store.allocate(2)
    exc = info.value
    assert (exc.wanted, exc.free, exc.capacity) == (2, 1, 4)
    assert str(exc).startswith("page store full: 2 slot(s) wanted, 1 free of 4")
    assert "page_store_mb" in str(exc)
    assert store.free == 1 and store.used == 3
    (last,) = store.allocate(1)
    assert last not in taken
    with pytest.raises(StoreFull):
        store.allocate(1)


def test_store_full_message_in_mib() -> None:
    s = PageStore(512)
    try:
        with pytest.raises(StoreFull, match=r"513 slot\(s\) wanted, 512 free of 512 \(2 MiB\)"):
            s.allocate(513)
        assert s.free == 512
    finally:
        s.close()


def test_slot_views(store: PageStore) -> None:
    s0, s1 = store.allocate(2)
    v0, v1 = store.slot(s0), store.slot(s1)
    assert len(v0) == len(v1) == PAGE_SIZE
    assert v0.tobytes() == ZERO_PAGE  # anonymous memory starts zeroed
    v0[:] = b"a" * PAGE_SIZE
    assert v1.tobytes() == ZERO_PAGE
    v1[:] = b"b" * PAGE_SIZE
    assert store.slot(s0).tobytes() == b"a" * PAGE_SIZE
    assert store.slot(s1).tobytes() == b"b" * PAGE_SIZE
    # the last slot is a full page too
    assert len(store.slot(store.capacity - 1)) == PAGE_SIZE
    v0.release()
    v1.release()


def test_allocate_negative_count_is_refused(store: PageStore) -> None:
    with pytest.raises(ValueError):
        store.allocate(-1)
