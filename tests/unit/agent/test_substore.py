"""The sub-host page store: all-or-nothing puts, gets, drops, commits; VM drops."""

from __future__ import annotations

import uuid

import pytest

from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric.errors import (
    PagesNotHeldError,
    RemoteBadRequestError,
    StoreFullError,
)

PAGE = 4096


def _page(tag: int) -> bytes:
    return bytes([tag]) * PAGE


def test_put_get_drop_round_trip() -> None:
    s, vm = SubHostStore(8), uuid.uuid4()
    s.put_pages(vm, [3, 5], [_page(3), _page(5)])
    assert s.get_pages(vm, [5, 3, 9]) == [_page(5), _page(3), None]
    s.put_pages(vm, [3], [_page(7)])            # overwrite takes no new slot
    assert s.store.used == 2 and s.get_pages(vm, [3]) == [_page(7)]
    s.drop_pages(vm, [3, 5, 11])
    assert s.store.used == 0 and s.stats()["vms"] == {}


def test_full_store_refuses_the_whole_put() -> None:
    s, vm = SubHostStore(2), uuid.uuid4()
    s.put_pages(vm, [0], [_page(1)])
    with pytest.raises(StoreFullError):
        s.put_pages(vm, [1, 2], [_page(2), _page(3)])
    assert s.store.used == 1 and s.get_pages(vm, [1, 2]) == [None, None]


def test_vms_are_separate() -> None:
    s, a, b = SubHostStore(4), uuid.uuid4(), uuid.uuid4()
    s.put_pages(a, [0], [_page(1)])
    assert s.get_pages(b, [0]) == [None]
    s.drop_pages(b, [0])
    assert s.get_pages(a, [0]) == [_page(1)]


# -- partial migration: held pages, commits, VM drops --------------------------------------


def test_held_pages_are_copies_in_the_given_order() -> None:
    s, vm = SubHostStore(4), uuid.uuid4()
    s.put_pages(vm, [1, 2], [_page(1), _page(2)])
    found, data = s.held_pages(vm, [2, 9, 1, 2])
    assert found == [2, 1, 2] and data == [_page(2), _page(1), _page(2)]
    assert all(type(d) is bytes for d in data)
    s.drop_pages(vm, [1, 2])
    s.put_pages(vm, [5], [_page(5)])  # reuses a freed slot
    assert data[1] == _page(1)
    assert s.held_pages(uuid.uuid4(), [1]) == ([], [])


def test_commit_moves_slots_from_the_key() -> None:
    s, vm, key = SubHostStore(8), uuid.uuid4(), uuid.uuid4()
    s.put_pages(vm, [1, 2], [_page(1), _page(2)])
    s.put_pages(key, [2, 3, 4], [_page(12), _page(13), _page(14)])
    assert s.store.used == 5
    assert s.commit_pages(vm, key, [2, 3, 3]) == 2  # a page named twice moves once
    assert s.get_pages(vm, [1, 2, 3]) == [_page(1), _page(12), _page(13)]
    assert s.get_pages(key, [2, 3, 4]) == [None, None, _page(14)]
    assert s.store.used == 4  # the replaced copy of page 2 was released
    assert s.commit_pages(vm, key, [4]) == 1
    assert s.stats()["vms"] == {str(vm): 4}  # the emptied key is gone
    assert s.commit_pages(vm, key, []) == 0


def test_commit_is_all_or_nothing() -> None:
    s, vm, key = SubHostStore(8), uuid.uuid4(), uuid.uuid4()
    s.put_pages(key, [1, 2], [_page(1), _page(2)])
    s.put_pages(vm, [3], [_page(3)])     # held by the VM, not staged
    with pytest.raises(PagesNotHeldError) as info:
        s.commit_pages(vm, key, [1, 3, 2, 4])
    assert info.value.pages == [3, 4]
    assert s.get_pages(key, [1, 2]) == [_page(1), _page(2)]
    assert s.get_pages(vm, [1, 2, 3]) == [None, None, _page(3)]
    with pytest.raises(PagesNotHeldError):
        s.commit_pages(vm, uuid.uuid4(), [1])
    assert s.store.used == 3


def test_commit_into_the_key_itself_is_refused() -> None:
    s, vm = SubHostStore(2), uuid.uuid4()
    s.put_pages(vm, [1], [_page(1)])
    with pytest.raises(RemoteBadRequestError):
        s.commit_pages(vm, vm, [1])
    assert s.get_pages(vm, [1]) == [_page(1)] and s.store.used == 1


def test_drop_vm_releases_every_slot() -> None:
    s, a, b = SubHostStore(8), uuid.uuid4(), uuid.uuid4()
    s.put_pages(a, [1, 2, 3], [_page(1)] * 3)
    s.put_pages(b, [1], [_page(2)])
    assert s.drop_vm(a) == 3
    assert s.store.used == 1 and s.get_pages(a, [1]) == [None]
    assert s.drop_vm(a) == 0 and s.drop_vm(uuid.uuid4()) == 0
    assert s.get_pages(b, [1]) == [_page(2)]
    s.put_pages(a, list(range(7)), [_page(3)] * 7)  # the slots are free again
