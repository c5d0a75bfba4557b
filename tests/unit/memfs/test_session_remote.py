"""Page-ins of pages held by sub-hosts, through the FUSE READ path, with a fake backend."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Sequence

import pytest

from nova_ipmigrate.memfs.pages import PageState
from nova_ipmigrate.memfs.protocol import PAGE_SIZE, ROOT_ID
from nova_ipmigrate.memfs.remote import RemoteUnavailable
from nova_ipmigrate.memfs.session import FuseSession, SessionConfig
from nova_ipmigrate.memfs.store import PageStore
from tests.unit.memfs.fuse_helpers import Client

VM = uuid.uuid4()


class FakeRemote:
    def __init__(self) -> None:
        self.held: dict[int, bytes] = {}
        self.down = False

    def fetch(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> list[bytes]:
        if self.down:
            raise RemoteUnavailable(holder, pages, "down")
        return [self.held[p] for p in pages]

    def push(self, vm: uuid.UUID, pages: Sequence[int], data: Sequence[memoryview]) -> int:
        self.held.update(zip(pages, (bytes(d) for d in data), strict=True))
        return 1

    def drop(self, vm: uuid.UUID, holder: int, pages: Sequence[int]) -> None:
        for p in pages:
            self.held.pop(p, None)

    def holder_name(self, holder: int) -> str:
        return f"sub{holder}"


def _setup(store_pages: int = 64) -> tuple[Client, FuseSession, int, FakeRemote]:
    s = FuseSession(PageStore(store_pages), SessionConfig())
    c = Client(s)
    assert c.init().ok
    nodeid, _ = c.create(ROOT_ID, "pc.ram").entry()
    assert c.setattr(nodeid, 1 << 3, size=16 * PAGE_SIZE).ok
    ram = s.tree.get(nodeid).ram
    assert ram is not None and ram.table is not None
    remote = FakeRemote()
    ram.set_remote(VM, remote)
    # page 3 is paged out to sub-host 1 (as the pusher would leave it)
    t = ram.table
    t.write(3, 0, memoryview(b"\x07" * PAGE_SIZE))
    remote.held[3] = b"\x07" * PAGE_SIZE
    t.slot[3], slot = -1, t.slot[3]
    t.store.release(slot)
    t.holder[3] = 1
    t._set(3, int(PageState.REMOTE))
    return c, s, nodeid, remote


def test_read_of_a_remote_page_fetches_it_and_drops_the_stale_copy() -> None:
    c, s, nodeid, remote = _setup()
    r = c.read(nodeid, 3 * PAGE_SIZE, PAGE_SIZE)
    assert r.ok and r.payload == b"\x07" * PAGE_SIZE
    ram = s.tree.get(nodeid).ram
    assert ram is not None and ram.table is not None
    assert ram.table.state[3] == PageState.CACHED and ram.table.stats.remote_page_ins == 1
    assert ram.table.take_drops() == {1: [3]}


def test_multi_page_read_mixes_local_and_remote_pages() -> None:
    c, _s, nodeid, _remote = _setup()
    r = c.read(nodeid, 2 * PAGE_SIZE, 3 * PAGE_SIZE)
    assert r.ok and r.payload == bytes(PAGE_SIZE) + b"\x07" * PAGE_SIZE + bytes(PAGE_SIZE)


def test_unreachable_holder_fails_the_read_and_marks_the_instance_broken() -> None:
    c, s, nodeid, remote = _setup()
    remote.down = True
    r = c.read(nodeid, 3 * PAGE_SIZE, PAGE_SIZE)
    assert r.error == -errno.EIO and not r.payload
    ram = s.tree.get(nodeid).ram
    assert ram is not None and ram.lost_pages == {3}
    assert ram.stats()["broken"] and ram.table is not None
    assert ram.table.state[3] == PageState.REMOTE, "nothing changed: no wrong data later"


def test_no_local_slot_for_a_remote_page_in_fails_with_enomem(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, s, nodeid, _remote = _setup(store_pages=1)
    s.store.allocate(s.store.free)
    monkeypatch.setattr("nova_ipmigrate.memfs.session.time.sleep", lambda _s: None)
    assert c.read(nodeid, 3 * PAGE_SIZE, PAGE_SIZE).error == -errno.ENOMEM
