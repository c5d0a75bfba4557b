"""Part moves over the real fabric, in-process: ``migration.transfer.PartTransfer``.

Every host is a :class:`~nova_ipmigrate.fabric.server.FabricServer` on 127.0.0.1
serving an :class:`~nova_ipmigrate.agent.pageservice.AgentPageService` over a
:class:`~nova_ipmigrate.agent.substore.SubHostStore` (the sub-hosts copy to each
other for real); the main host's directory is a real
:class:`~nova_ipmigrate.memfs.pages.PageTable`, driven through its public
transitions (write, eviction window, push candidates/done, fill_remote), as the
kernel, the evictor and the pusher would. :class:`Guest` is that main host's
side, and remembers the latest content of every page (``truth``).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from nova_ipmigrate.agent.pageservice import AgentPageService
from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric.client import FabricClient
from nova_ipmigrate.fabric.errors import PagesNotHeldError
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.memfs.pages import PageState, PageTable
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import ZERO_PAGE, PageStore
from nova_ipmigrate.migration import transfer as transfer_mod
from nova_ipmigrate.migration.consistency import MAIN_HOST, Phase
from nova_ipmigrate.migration.transfer import (
    Endpoint,
    LocalStaging,
    PartTransfer,
    wait_all,
)
from tests.unit.fabric.helpers import KEY, VM
from tests.waiting import wait_for

REMOTE = PageState.REMOTE
MAIN = "main"


def content(tag: int) -> bytes:
    """A page whose every 8 bytes say ``tag`` (never all zeros)."""
    return (tag | 1 << 63).to_bytes(8, "little") * (PAGE_SIZE // 8)


# -- the hosts ------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    store: SubHostStore
    service: AgentPageService
    server: FabricServer


class Cluster:
    """The main host and its sub-hosts, each with its fabric server and store."""

    def __init__(self, names: Sequence[str] = (MAIN, "h1", "h2", "h3"),
                 capacity: int = 1024) -> None:
        self.hosts: dict[str, Host] = {}
        self._clients: dict[str, FabricClient] = {}
        for name in names:
            store = SubHostStore(capacity)
            service = AgentPageService(store, name, KEY, connect_timeout=1.0,
                                       request_timeout=2.0)
            server = FabricServer("127.0.0.1", 0, name, KEY, service)
            server.start()
            self.hosts[name] = Host(name, store, service, server)

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        for h in self.hosts.values():
            h.server.stop()
            h.service.close()

    def port(self, name: str) -> int:
        return self.hosts[name].server.port

    def endpoint(self, name: str) -> Endpoint:
        return Endpoint(name, "127.0.0.1", self.port(name))

    def client(self, name: str) -> FabricClient:
        """The main host's client to ``name`` (one each, kept)."""
        c = self._clients.get(name)
        if c is None:
            c = FabricClient(MAIN, "127.0.0.1", self.port(name), KEY, name,
                             connect_timeout=1.0, request_timeout=2.0)
            self._clients[name] = c
        return c

    def new_client(self, name: str) -> FabricClient:
        """A client the caller owns (a PartTransfer's)."""
        c = FabricClient(MAIN, "127.0.0.1", self.port(name), KEY, name,
                         connect_timeout=1.0, request_timeout=2.0)
        self._clients[f"{name}-{id(c)}"] = c
        return c

    def held(self, name: str, key: uuid.UUID = VM, npages: int = 4096) -> dict[int, bytes]:
        """What host ``name`` holds under ``key`` (a VM or a staging key)."""
        found, data = self.hosts[name].store.held_pages(key, range(npages))
        return dict(zip(found, data, strict=True))

    def local_staging(self) -> LocalStaging:
        """The main host's own fabric store as the destination (like the agent's)."""
        store = self.hosts[MAIN].store

        def take(key: uuid.UUID, pages: Sequence[int]) -> dict[int, bytes]:
            got, data = store.held_pages(key, list(pages))
            store.drop_pages(key, got)
            return dict(zip(got, data, strict=True))

        return LocalStaging(take, store.drop_pages, store.drop_vm)


# -- the main host's side -------------------------------------------------------------


class Guest:
    """The main host's directory and the I/O of its page-ins and page-outs.

    ``holders``: holder number -> host name. The pusher's rule is kept: stale
    copies are dropped (:meth:`flush_drops`) before any push.
    """

    def __init__(self, cluster: Cluster, npages: int, holders: dict[int, str],
                 store_pages: int | None = None, table: PageTable | None = None) -> None:
        self.cluster = cluster
        self.npages = npages
        self.holders = dict(holders)
        self.table = table or PageTable(npages, PageStore(store_pages or npages + 64))
        self.table.push_enabled = True
        self.truth: dict[int, bytes] = {}
        self._tag = 0
        self.lock = threading.Lock()  # one actor at a time does guest I/O

    def next_content(self) -> bytes:
        self._tag += 1
        return content(self._tag)

    # -- the kernel and the evictor

    def write(self, page: int, data: bytes | None = None) -> bytes:
        """A full-page write(2) (or a store + writeback) of new content."""
        data = data if data is not None else self.next_content()
        self.table.write(page, 0, memoryview(data))
        self.truth[page] = data
        return data

    def evict_all(self) -> int:
        """Page out every resident page into the local store (STORED, queued to push)."""
        w = self.table.begin_window(self.npages)
        return 0 if w is None else self.table.end_window(w)

    # -- the pusher

    def flush_drops(self) -> None:
        for h, pages in self.table.take_drops().items():
            self.cluster.client(self.holders[h]).drop_pages(VM, pages)

    def push_begin(self, limit: int = 1 << 20) -> tuple[list[tuple[int, int]], list[bytes]]:
        buf = memoryview(bytearray(min(limit, self.npages) * PAGE_SIZE))
        cands = self.table.push_candidates(len(buf) // PAGE_SIZE, buf)
        return cands, [bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
                       for i in range(len(cands))]

    def push_put(self, cands: list[tuple[int, int]], data: list[bytes], holder: int) -> None:
        if cands:
            self.cluster.client(self.holders[holder]).put_pages(
                VM, [p for p, _ in cands], data)

    def push(self, holder: int, limit: int = 1 << 20) -> list[int]:
        """One pusher round to ``holder``: drops, candidates, put, push_done."""
        self.flush_drops()
        cands, data = self.push_begin(limit)
        if not cands:
            return []
        self.push_put(cands, data, holder)
        self.table.push_done(cands, holder)
        return [p for p, _ in cands]

    def page_out(self, pages: Sequence[int], holder: int) -> None:
        """Setup: give ``pages`` new content and leave them REMOTE at ``holder``."""
        for p in pages:
            self.write(p)
        self.evict_all()
        pushed = self.push(holder)
        assert sorted(pushed) == sorted(pages)
        assert all(self.table.state[p] == REMOTE and self.table.holder[p] == holder
                   for p in pages)

    # -- the READ path

    def page_in(self, page: int) -> bool:
        """Page-in of a remote page from the holder the directory names (as the
        session does: a page that moved meanwhile is asked of its new holder)."""
        t = self.table
        for _ in range(20):
            with t.lock:
                if t.state[page] != REMOTE:
                    return False
                h = t.holder[page]
            try:
                data = bytes(self.cluster.client(self.holders[h]).get_pages(VM, [page])[0])
            except PagesNotHeldError:
                assert t.holder_of([page]) != [h], (
                    f"page {page} is held by {self.holders[h]} in the directory but that "
                    f"host does not have it")
                continue
            if t.fill_remote(page, data, h):
                assert data == self.truth[page], (
                    f"page-in of page {page} from {self.holders[h]} returned stale content")
                return True
        raise AssertionError(f"page {page} kept moving while being paged in")

    # -- checks

    def check_content(self) -> None:
        """Every page reads as its latest content, wherever the directory says it is."""
        held = {h: self.cluster.held(name, npages=self.npages)
                for h, name in self.holders.items()}
        t = self.table
        for p in range(self.npages):
            want = self.truth.get(p, ZERO_PAGE)
            if t.state[p] == REMOTE:
                h = t.holder[p]
                got = held[h].get(p)
                assert got is not None, (
                    f"page {p} is lost: the directory says {self.holders[h]} holds it, "
                    f"that host does not")
                assert got == want, f"page {p} at {self.holders[h]} holds stale content"
            else:
                assert t.content(p) == want, f"page {p} (local) holds stale content"

    def check_no_leaks(self) -> None:
        """Each sub-host holds exactly the pages the directory says it holds."""
        t = self.table
        for h, name in self.holders.items():
            want = {p for p in range(self.npages) if t.state[p] == REMOTE and t.holder[p] == h}
            got = set(self.cluster.held(name, npages=self.npages))
            assert got == want, (f"{name} holds {sorted(got - want)} beyond the directory, "
                                 f"lacks {sorted(want - got)}")

    def at(self, holder: int) -> list[int]:
        return [p for p, _ in self.table.remote_pages(holder)]


def transfer(cluster: Cluster, guest: Guest, source: int, dest: int, **kw: Any) -> PartTransfer:
    src, dst = guest.holders[source], MAIN if dest == MAIN_HOST else guest.holders[dest]
    kw.setdefault("region_pages", 8)
    if dest == MAIN_HOST:
        return PartTransfer(guest.table, VM, source, dest, cluster.endpoint(MAIN),
                            cluster.new_client(src), None, local=cluster.local_staging(),
                            **kw)
    dest_client = kw.pop("dest_client", None) or cluster.new_client(dst)
    return PartTransfer(guest.table, VM, source, dest, cluster.endpoint(dst),
                        cluster.new_client(src), dest_client, **kw)


class SourceProxy:
    """A move's source client, for tests that override one of its calls."""

    def __init__(self, inner: FabricClient) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def split(cluster: Cluster, npages: int = 64, at_source: range = range(0, 40),
          at_dest: range = range(40, 52), local: range = range(52, 56),
          table: PageTable | None = None) -> Guest:
    """A VM with part ``at_source`` on h1 (holder 1), ``at_dest`` on h2 (holder 2),
    ``local`` in the main host's store; the rest never written."""
    g = Guest(cluster, npages, {1: "h1", 2: "h2"}, table=table)
    g.page_out(list(at_source), 1)
    if at_dest:
        g.page_out(list(at_dest), 2)
    for p in local:
        g.write(p)
    g.evict_all()
    with g.table.lock:
        g.table._push_queue.clear()   # the local pages stay (no pusher runs)
    return g


# -- moves ----------------------------------------------------------------------------


def test_full_move_to_a_sub_host_already_holding_a_part(cluster: Cluster) -> None:
    g = split(cluster)
    done: list[PartTransfer] = []
    tr = transfer(cluster, g, 1, 2, on_done=done.append)
    assert tr.source_name == "h1" and tr.dest_name == "h2"
    tr.start()
    assert tr.join(10), "the move did not finish"
    assert tr.phase is Phase.SWITCHED and tr.error is None and done == [tr]
    assert g.at(1) == [] and g.at(2) == list(range(0, 52))
    assert all(g.table.state[p] == PageState.STORED for p in range(52, 56))
    g.check_content()
    assert cluster.held("h1") == {}, "the source still holds pages of the VM"
    assert cluster.held("h2", tr.key) == {}, "staged copies left at the destination"
    g.flush_drops()
    g.check_no_leaks()
    assert g.table.moves == [] and 1 in g.table.closed_holders
    pr = tr.progress()
    assert pr["phase"] == "switched" and pr["part_pages"] == 40 and pr["switched"] == 40
    assert pr["pages_done"] == pr["pages_total"] == 40 and pr["fault"] is None
    assert pr["regions"] == 5 and pr["source"] == "h1" and pr["dest"] == "h2"


def test_move_to_a_new_sub_host(cluster: Cluster) -> None:
    g = split(cluster, at_dest=range(0))
    g.holders[3] = "h3"
    tr = transfer(cluster, g, 1, 3, region_pages=16)
    tr.run()   # in this thread
    assert tr.finished.is_set() and tr.phase is Phase.SWITCHED
    assert g.at(3) == list(range(40)) and cluster.held("h1") == {}
    g.check_content()
    g.flush_drops()
    g.check_no_leaks()


def test_empty_part_switches_at_once(cluster: Cluster) -> None:
    g = split(cluster, at_source=range(0), at_dest=range(0, 4))
    tr = transfer(cluster, g, 1, 2)
    tr.run()
    assert tr.phase is Phase.SWITCHED and tr.error is None
    assert tr.progress()["part_pages"] == 0
    g.check_content()


def test_constructor_checks_the_destination_kind(cluster: Cluster) -> None:
    g = split(cluster, at_source=range(0, 2), at_dest=range(0), local=range(0))
    src = cluster.client("h1")
    with pytest.raises(ValueError, match="stages locally"):
        PartTransfer(g.table, VM, 1, MAIN_HOST, cluster.endpoint(MAIN), src, None)
    with pytest.raises(ValueError, match="stages locally"):
        PartTransfer(g.table, VM, 1, 2, cluster.endpoint("h2"), src, None)
    with pytest.raises(ValueError, match="stages locally"):
        PartTransfer(g.table, VM, 1, 2, cluster.endpoint("h2"), src, cluster.client("h2"),
                     local=cluster.local_staging())
    with pytest.raises(ValueError, match="differ"):
        PartTransfer(g.table, VM, 1, 1, cluster.endpoint("h1"), src, cluster.client("h1"))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("dest", [2, MAIN_HOST])
def test_move_while_the_guest_pages_in_and_out(cluster: Cluster, seed: int,
                                               dest: int) -> None:
    """Page-ins from any holder and page-outs to the source while the part moves:
    every page always reads as its latest content, and nothing is left behind."""
    npages = 320
    g = split(cluster, npages, at_source=range(0, 256), at_dest=range(256, 288),
              local=range(288, 292))
    rnd = random.Random(seed)
    # ~0.4 s for the bulk pass: 256 pages in regions of 8, at 2.5 MiB/s
    tr = transfer(cluster, g, 1, dest, region_pages=8, max_rate=2.5 * 2**20)
    errors: list[BaseException] = []
    stop = threading.Event()
    ops = {"page_in": 0, "write": 0, "page_out": 0}
    started = threading.Event()
    rounds, next_out = [0], [0.0]

    def guest() -> None:
        try:
            while not stop.is_set():
                r = rnd.random()
                if r < 0.5:
                    remote = [p for p in range(npages) if g.table.state[p] == REMOTE]
                    if remote and g.page_in(rnd.choice(remote)):
                        ops["page_in"] += 1
                elif r < 0.7:
                    local = [p for p in range(npages)
                             if g.table.state[p] in (PageState.CACHED, PageState.STORED)]
                    if local:
                        g.write(rnd.choice(local))
                        ops["write"] += 1
                elif rounds[0] < 40 and time.monotonic() >= next_out[0]:
                    # Page-outs to the source, below the copy rate (see the
                    # convergence test below for why) and 40 rounds at most.
                    next_out[0] = time.monotonic() + 0.005
                    g.evict_all()
                    pushed = len(g.push(1, limit=rnd.randint(1, 4)))
                    rounds[0] += pushed > 0
                    ops["page_out"] += pushed
                started.set()
                stop.wait(0.002)   # a guest slower than the copy: both get their share
        except BaseException as exc:  # re-raised by the test
            errors.append(exc)
            started.set()

    tr.start()
    th = threading.Thread(target=guest, daemon=True)
    th.start()
    assert started.wait(5)
    try:
        assert tr.join(20), "the move did not finish"
    finally:
        stop.set()
        th.join(10)
    if errors:
        raise errors[0]
    assert tr.phase is Phase.SWITCHED, tr.error
    pr = tr.progress()
    assert ops["page_in"] > 0 and pr["page_ins_from_source"] > 0, (ops, pr)
    assert ops["page_out"] > 0 and pr["page_outs_to_source"] > 0, (ops, pr)
    assert g.at(1) == [], "pages left at the source after the switch"
    if dest == MAIN_HOST:
        assert pr["installed"] > 0, (ops, pr)
        assert cluster.held(MAIN, tr.key) == {}
    else:
        assert pr["switched"] > 0, (ops, pr)
        assert cluster.held("h2", tr.key) == {}, "staged copies left at the destination"
    # The pusher's next round drops what went stale (refused page-outs to the closed
    # source, copies paged in from): then every host holds what the directory says.
    g.flush_drops()
    g.check_content()
    g.check_no_leaks()
    assert cluster.held("h1") == {}
    assert g.table.moves == []


def test_abort_mid_move_leaves_the_source_owner(cluster: Cluster) -> None:
    g = split(cluster)
    dest_part = cluster.held("h2")
    # 40 pages in regions of 4 pages at 160 KiB/s: ~1 s; we abort after the first regions
    tr = transfer(cluster, g, 1, 2, region_pages=4, max_rate=160 * 1024)
    tr.start()
    assert wait_for(lambda: int(tr.progress()["copied"]) > 0, 5)
    assert cluster.held("h2", tr.key), "nothing staged at the destination yet"
    tr.abort()
    assert tr.join(5), "the abort did not end the move"
    assert tr.phase is Phase.ABORTED and tr.error == "aborted by request"
    assert int(tr.progress()["copied"]) < 40, "the move finished before the abort"
    assert g.at(1) == list(range(40)), "the source does not own its part any more"
    assert g.at(2) == list(range(40, 52))
    assert cluster.held("h2") == dest_part, "the destination's own part changed"
    assert cluster.held("h2", tr.key) == {}, "staged copies left at the destination"
    assert len(cluster.held("h1")) == 40
    assert 1 not in g.table.closed_holders and g.table.moves == []
    g.check_content()
    g.flush_drops()
    g.check_no_leaks()


def test_destination_down_mid_move_rolls_back(cluster: Cluster) -> None:
    g = split(cluster)
    tr = transfer(cluster, g, 1, 2, region_pages=4, max_rate=160 * 1024)
    tr.start()
    assert wait_for(lambda: int(tr.progress()["copied"]) > 0, 5)
    cluster.hosts["h2"].server.stop()
    assert tr.join(15), "the move did not notice the destination is down"
    assert tr.phase is Phase.ABORTED
    assert tr.error is not None and "h2" in tr.error, tr.error
    assert tr.progress()["fault"] == tr.error
    assert g.at(1) == list(range(40)), "the source does not own its part any more"
    assert len(cluster.held("h1")) == 40
    assert 1 not in g.table.closed_holders and g.table.moves == []
    # The source's copy is intact: page-ins from it still work.
    for p in (0, 17, 39):
        assert g.page_in(p)


def test_copy_failure_is_a_transfer_failure(cluster: Cluster) -> None:
    """The source cannot copy (the host at the destination's address is another
    one: the handshake fails): the error is recorded and the move rolled back."""
    g = split(cluster, at_dest=range(0))
    g.holders[3] = "h3"
    tr = transfer(cluster, g, 1, 3)
    tr.dest_endpoint = Endpoint("h3", "127.0.0.1", cluster.port("h2"))  # h2 answers
    tr.run()
    assert tr.phase is Phase.ABORTED and tr.error and "copy of" in tr.error, tr.error
    assert g.at(1) == list(range(40)) and len(cluster.held("h1")) == 40
    assert cluster.held("h2", tr.key) == {} and cluster.held("h3", tr.key) == {}


def test_move_to_the_main_host_installs_the_pages_locally(cluster: Cluster) -> None:
    g = split(cluster)
    tr = transfer(cluster, g, 1, MAIN_HOST)
    assert tr.dest_name == MAIN
    tr.start()
    assert tr.join(10)
    assert tr.phase is Phase.SWITCHED and tr.error is None
    assert all(g.table.state[p] == PageState.STORED for p in range(40))
    for p in range(40):
        assert g.table.content(p) == g.truth[p], f"page {p} came home with other content"
    assert g.at(1) == [] and g.at(2) == list(range(40, 52))
    assert cluster.held("h1") == {}
    assert cluster.held(MAIN, tr.key) == {}, "staged copies left in the main host's store"
    pr = tr.progress()
    assert pr["installed"] == pr["switched"] == 40
    g.check_content()
    g.flush_drops()
    g.check_no_leaks()


def test_move_to_the_main_host_with_a_full_store_rolls_back(cluster: Cluster) -> None:
    g = Guest(cluster, 64, {1: "h1"}, store_pages=48)
    g.page_out(list(range(40)), 1)
    for p in range(40, 60):       # 20 local pages: room for only 28 of the 40
        g.write(p)
    tr = transfer(cluster, g, 1, MAIN_HOST)
    tr.run()
    assert tr.phase is Phase.ABORTED and tr.error and "page store full" in tr.error
    assert len(g.at(1)) == 40 - int(tr.progress()["installed"])
    assert cluster.held(MAIN, tr.key) == {}
    g.check_content()


def test_wait_all(cluster: Cluster) -> None:
    g = split(cluster)
    slow = transfer(cluster, g, 1, 2, region_pages=4, max_rate=160 * 1024)
    assert not wait_all([slow], timeout=0.05)
    slow.start()
    slow.abort()
    assert wait_all([slow], timeout=5)


# -- races with the pusher at the destination -------------------------------------------


class HookedClient:
    """A destination client whose commit runs ``before`` and ``after`` hooks."""

    def __init__(self, inner: FabricClient, before: Callable[[list[int]], None] | None = None,
                 after: Callable[[list[int]], None] | None = None) -> None:
        self._inner = inner
        self._before = before
        self._after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def commit_pages(self, vm: uuid.UUID, key: uuid.UUID, pages: Sequence[int]) -> int:
        if self._before is not None:
            self._before(list(pages))
            self._before = None
        n = self._inner.commit_pages(vm, key, pages)
        if self._after is not None:
            self._after(list(pages))
            self._after = None
        return n


def test_page_out_to_the_destination_during_the_commit_is_not_overwritten(
        cluster: Cluster) -> None:
    """A page of the part is paged in, rewritten and paged out to the destination
    (an ordinary holder, open for page-outs) while the commit is on its way: the
    commit must not replace that newer copy with the older staged one."""
    g = split(cluster, at_source=range(0, 8), at_dest=range(8, 12), local=range(0))
    victim: list[int] = []

    def page_out_to_dest(pages: list[int]) -> None:
        p = pages[0]
        victim.append(p)
        assert g.page_in(p)
        g.write(p)                       # newer content
        g.evict_all()
        assert g.push(2) == [p]          # accepted: the destination is open
        assert g.table.holder_of([p]) == [2]

    dest = HookedClient(cluster.new_client("h2"), before=page_out_to_dest)
    tr = transfer(cluster, g, 1, 2, dest_client=dest)
    tr.run()
    assert tr.phase is Phase.SWITCHED and victim
    p = victim[0]
    assert cluster.held("h2")[p] == g.truth[p], (
        f"page {p}: the destination's copy is the older staged one: the commit "
        f"overwrote the page paged out there meanwhile (stale data for the guest)")
    g.check_content()


def test_push_to_the_destination_in_flight_at_the_switch_is_not_dropped(
        cluster: Cluster) -> None:
    """The pusher has put a page at the destination (an open holder) but not yet
    recorded it (push_done) when the switch finds that page's committed copy
    stale and queues its drop: the drop must not delete the pushed copy that the
    directory points at once push_done runs."""
    g = split(cluster, at_source=range(0, 8), at_dest=range(8, 12), local=range(0))
    in_flight: list[tuple[list[tuple[int, int]], list[bytes]]] = []

    def put_without_push_done(pages: list[int]) -> None:
        p = pages[0]
        assert g.page_in(p)
        g.write(p)
        g.evict_all()
        g.flush_drops()                        # the pusher's round: drops first ...
        cands, data = g.push_begin()
        assert [q for q, _ in cands] == [p]
        g.push_put(cands, data, 2)             # ... the put is answered ...
        in_flight.append((cands, data))        # ... push_done comes after the switch

    dest = HookedClient(cluster.new_client("h2"), after=put_without_push_done)
    tr = transfer(cluster, g, 1, 2, dest_client=dest)
    tr.run()
    assert tr.phase is Phase.SWITCHED and in_flight
    cands, _ = in_flight[0]
    assert g.table.push_done(cands, 2) == []   # accepted: REMOTE at h2
    g.flush_drops()                            # the pusher's next round
    p = cands[0][0]
    assert g.table.holder_of([p]) == [2]
    assert p in cluster.held("h2"), (
        f"page {p} is lost: the switch queued a drop of its copy at h2 while its "
        f"push there was in flight; push_done then made h2 its holder and the drop "
        f"deleted the only copy")
    g.check_content()


def test_move_converges_while_the_guest_keeps_paging_out_to_the_source(
        cluster: Cluster) -> None:
    """The bulk pass ends when the part has been copied once; the move then
    converges (the source is closed for page-outs) and re-sends what changed.
    Page-outs to the source while it is open must not keep it in the bulk pass
    for ever: here, before every copy request, one page of the part is paged in
    and out to the source again (a guest faster than the copy)."""
    g = split(cluster, at_source=range(0, 8), at_dest=range(8, 12), local=range(0))
    phases: list[Phase] = []
    tr: PartTransfer

    class Source(SourceProxy):
        def copy_pages(self, vm: uuid.UUID, key: uuid.UUID, name: str, address: str,
                       port: int, pages: Sequence[int], timeout: float | None = None
                       ) -> tuple[int, list[int]]:
            # Copies run two at a time (the pipeline's depth); the guest is one
            # actor (its kernel and one pusher): without the lock, two concurrent
            # pushers could send a drop after the other's put and lose the page.
            with g.lock:
                phases.append(tr.phase)
                if len(phases) <= 40:
                    others = [p for p in g.at(1) if p not in pages]
                    if others and g.page_in(others[0]):
                        g.evict_all()
                        g.push(1)     # accepted while the source is open: re-sent later
            return self._inner.copy_pages(vm, key, name, address, port, pages,
                                          timeout=timeout)

    tr = transfer(cluster, g, 1, 2, region_pages=4)
    tr.source_client = Source(tr.source_client)  # type: ignore[assignment]
    tr.run()
    assert tr.phase is Phase.SWITCHED, tr.error
    # 8 pages in regions of 4: the bulk pass is 2 copy requests.
    assert Phase.CONVERGING in phases[:12], (
        f"the move stayed in the bulk pass for {phases.count(Phase.COPYING)} copy "
        f"requests: page-outs to the (still open) source keep refilling the re-send "
        f"set, and _copy_all only converges once it is empty")
    g.flush_drops()
    g.check_content()
    g.check_no_leaks()


def test_a_page_the_source_never_has_fails_the_move_instead_of_looping(
        cluster: Cluster) -> None:
    """The directory names the source as the holder of a page the source answers
    "not held" for, round after round (the two disagree: that page is lost). The
    move polls slowly for a while (the page may still be on its way there), then
    ends, failed and rolled back, with the page named, instead of re-asking for ever."""
    g = split(cluster, at_source=range(0, 8), at_dest=range(8, 12), local=range(0))
    lost = 5
    asked: list[int] = []

    class Source(SourceProxy):
        def copy_pages(self, vm: uuid.UUID, key: uuid.UUID, name: str, address: str,
                       port: int, pages: Sequence[int], timeout: float | None = None
                       ) -> tuple[int, list[int]]:
            asked.append(len(pages))
            rest = [p for p in pages if p != lost]
            n, missing = (self._inner.copy_pages(vm, key, name, address, port, rest,
                                                 timeout=timeout) if rest else (0, []))
            return n, sorted([*missing, *([lost] if lost in pages else [])])

    tr = transfer(cluster, g, 1, 2)
    tr.missing_timeout = 0.5
    tr.source_client = Source(tr.source_client)  # type: ignore[assignment]
    t0 = time.monotonic()
    tr.run()
    assert tr.phase is Phase.ABORTED, tr.phase
    assert tr.error is not None and "does not hold page(s) [5]" in tr.error, tr.error
    assert time.monotonic() - t0 >= 0.5
    # polled, not spun: about one request per MISSING_POLL_S
    assert len(asked) < 0.5 / transfer_mod.MISSING_POLL_S + 15, len(asked)
    # pages switched in earlier rounds stay at the destination (whole there); the
    # lost one stays where the directory had it
    assert g.table.holder_of([0, lost]) == [2, 1]
