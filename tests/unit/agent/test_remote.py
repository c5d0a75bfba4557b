"""Remote paging over the fabric, with fake clients: retries, failures, placement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from nova_ipmigrate.agent.placement import RoundRobin
from nova_ipmigrate.agent.remote import FabricRemotePaging, SubHost
from nova_ipmigrate.fabric.auth import SharedKey
from nova_ipmigrate.fabric.errors import (
    FabricConnectionError,
    PagesNotHeldError,
    StoreFullError,
)
from nova_ipmigrate.memfs.remote import RemoteUnavailable

VM = uuid.uuid4()


class FakeClient:
    def __init__(self, fail: list[Exception] | None = None) -> None:
        self.fail = fail or []
        self.pages: dict[int, bytes] = {}
        self.closed = False

    def get_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> list[bytes]:
        if self.fail:
            raise self.fail.pop(0)
        return [self.pages[p] for p in pages]

    def put_pages(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[bytes]) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.pages.update(zip(pages, (bytes(d) for d in data), strict=True))

    def drop_pages(self, vm: uuid.UUID, pages: Sequence[int]) -> None:
        for p in pages:
            self.pages.pop(p, None)

    def close(self) -> None:
        self.closed = True


def _remote(clients: dict[int, FakeClient], timeout: float = 0.5) -> FabricRemotePaging:
    r = FabricRemotePaging("main", [SubHost("a", "127.0.0.1", 1), SubHost("b", "127.0.0.1", 2)],
                           SharedKey(b"k" * 32), RoundRobin(), fetch_timeout=timeout)
    r._client = lambda holder: clients[holder]  # type: ignore[method-assign,return-value,assignment]
    r._reset = lambda holder: None  # type: ignore[method-assign]
    return r


def test_push_places_round_robin_and_fetch_returns_the_pages() -> None:
    c = {1: FakeClient(), 2: FakeClient()}
    r = _remote(c)
    assert r.push(VM, [1], [memoryview(b"x" * 4096)]) == 1
    assert r.push(VM, [2], [memoryview(b"y" * 4096)]) == 2
    assert r.fetch(VM, 2, [2]) == [b"y" * 4096]
    r.drop(VM, 1, [1])
    assert c[1].pages == {}


def test_push_skips_a_full_or_broken_sub_host() -> None:
    c = {1: FakeClient([StoreFullError("full", [])]), 2: FakeClient()}
    r = _remote(c)
    assert r.push(VM, [7], [memoryview(b"z" * 4096)]) == 2
    c = {1: FakeClient([FabricConnectionError("down")]), 2: FakeClient([StoreFullError("x", [])])}
    with pytest.raises(RuntimeError, match="no sub-host took"):
        _remote(c).push(VM, [7], [memoryview(b"z" * 4096)])


def test_fetch_retries_a_transient_failure() -> None:
    c = {1: FakeClient([FabricConnectionError("blip")]), 2: FakeClient()}
    c[1].pages[4] = b"q" * 4096
    assert _remote(c, timeout=5).fetch(VM, 1, [4]) == [b"q" * 4096]


def test_fetch_gives_up_after_the_timeout_and_at_once_on_lost_pages() -> None:
    c = {1: FakeClient([FabricConnectionError("down")] * 100), 2: FakeClient()}
    with pytest.raises(RemoteUnavailable):
        _remote(c, timeout=0.3).fetch(VM, 1, [4])
    c = {1: FakeClient([PagesNotHeldError("gone", [4])]), 2: FakeClient()}
    with pytest.raises(RemoteUnavailable, match="gone"):
        _remote(c, timeout=60).fetch(VM, 1, [4])
    with pytest.raises(RemoteUnavailable):
        _remote(c).fetch(VM, 9, [4])            # not a holder of this VM


def test_bad_sub_host_lists_are_refused() -> None:
    with pytest.raises(ValueError):
        FabricRemotePaging("main", [], SharedKey(b"k" * 32), RoundRobin())
    with pytest.raises(ValueError):
        FabricRemotePaging("main", [SubHost("main", "x", 1)], SharedKey(b"k" * 32), RoundRobin())
