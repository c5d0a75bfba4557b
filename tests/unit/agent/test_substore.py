"""The sub-host page store: all-or-nothing puts, gets, drops."""

from __future__ import annotations

import uuid

import pytest

from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric.errors import StoreFullError

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
