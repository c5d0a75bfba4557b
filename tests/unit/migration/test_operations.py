"""Operations on split VMs (``migration.operations``): partial migration,
reintegration, abort, the registry, the refusals, and the naive baselines.

The hosts are in-process fabric servers (``test_transfer.Cluster``); the RAM file
is a real :class:`~nova_ipmigrate.memfs.ramfile.RamFile` paging to them through a
real :class:`~nova_ipmigrate.agent.remote.FabricRemotePaging`, with the memfs
pusher's :meth:`~nova_ipmigrate.memfs.pager.Pager.push_some` running in a thread
as the daemon runs it.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from nova_ipmigrate.agent.placement import RoundRobin
from nova_ipmigrate.agent.remote import FabricRemotePaging, SubHost
from nova_ipmigrate.fabric.errors import FabricError
from nova_ipmigrate.memfs.pager import Pager, PagerConfig
from nova_ipmigrate.memfs.pages import PageState
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.ramfile import RamFile
from nova_ipmigrate.memfs.store import PageStore
from nova_ipmigrate.migration import operations, transfer
from nova_ipmigrate.migration.operations import (
    Operation,
    OperationError,
    Operations,
    OpState,
)
from nova_ipmigrate.migration.transfer import Endpoint, LocalStaging
from tests.unit.fabric.helpers import KEY, VM
from tests.unit.migration.test_transfer import MAIN, Cluster, Guest, split
from tests.waiting import wait_for

PATH = "/vms/one/pc.ram"
REMOTE = PageState.REMOTE


class Pusher:
    """The memfs pusher of the main host: drops, then pushes, every few ms."""

    def __init__(self, ram: RamFile) -> None:
        self.ram = ram
        self.pager = Pager(PagerConfig(batch_pages=8), lambda: [], lambda _b: None, "/")
        self._stop = threading.Event()
        self._buf = memoryview(bytearray(8 * PAGE_SIZE))
        self._thread = threading.Thread(target=self._run, daemon=True, name="test-pusher")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.pager.push_some(self.ram, self._buf):
                self._stop.wait(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class World:
    """A split VM on the main host: h1 holds pages 0-23, h2 24-39, 40-43 are local."""

    def __init__(self, cluster: Cluster, npages: int = 64, store_pages: int | None = None,
                 at_h1: range = range(0, 24), at_h2: range = range(24, 40),
                 local: range = range(40, 44)) -> None:
        self.cluster = cluster
        self.ram = RamFile(1, PageStore(store_pages or npages + 64))
        self.ram.resize(npages * PAGE_SIZE)
        self.backend = FabricRemotePaging(
            MAIN, [SubHost(n, "127.0.0.1", cluster.port(n)) for n in ("h1", "h2")], KEY,
            RoundRobin(), fetch_timeout=2.0)
        self.ram.set_remote(VM, self.backend)
        assert self.ram.table is not None
        self.table = self.ram.table
        self.guest: Guest = split(cluster, npages, at_source=at_h1, at_dest=at_h2,
                                  local=local, table=self.table)
        self.ops = Operations(MAIN, cluster.endpoint(MAIN), cluster.local_staging(),
                              copy_timeout=5.0)
        self.pusher: Pusher | None = None

    def start_pusher(self) -> None:
        self.pusher = Pusher(self.ram)

    def close(self) -> None:
        for op in self.ops._ops.values():
            op.abort()
            # (an operation with no part to move never ends: see the test of that)
            op.wait(5 if op.transfers or op.strategy == "naive" else 0)
        if self.pusher is not None:
            self.pusher.stop()
        self.backend.close()

    def sync_holders(self) -> None:
        """The test's view of holder numbers follows the backend's."""
        self.guest.holders = {i + 1: s.name for i, s in enumerate(self.backend.sub_hosts)}

    def at(self, name: str) -> list[int]:
        """Pages the directory says host ``name`` holds (any of its holder numbers)."""
        t = self.table
        return [p for p in range(t.npages) if t.state[p] == REMOTE
                and self.backend.holder_name(t.holder[p]) == name]

    def local(self) -> list[int]:
        t = self.table
        return [p for p in range(t.npages) if t.state[p] == PageState.STORED]

    def settle(self) -> None:
        """Wait for the pusher to send every queued drop."""
        assert wait_for(lambda: not self.table._drop_queue, 5)
        # one more round: the last batch taken may still be on its way
        if self.pusher is not None:
            done = threading.Event()
            t = threading.Thread(target=lambda: (self.pusher.pager.push_some(  # type: ignore
                self.ram, memoryview(bytearray(8 * PAGE_SIZE))), done.set()))
            t.start()
            assert done.wait(5)


def _unused_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- partial migration ------------------------------------------------------------------


def test_partial_migration_to_a_new_host(world: World, cluster: Cluster) -> None:
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"))
    assert op.kind == "partial_migration" and op.source == "h1" and op.dest == "h3"
    assert op.id == f"{MAIN}-1" and op.vm == str(VM) and op.path == PATH
    assert op.wait(10), "the move did not finish"
    assert op.state is OpState.DONE and op.error is None
    assert world.at("h3") == list(range(24)) and world.at("h1") == []
    assert world.at("h2") == list(range(24, 40))
    assert world.backend.active_holders() == {2: "h2", 3: "h3"}
    assert world.table.closed_holders.isdisjoint({2, 3}), "the new holder stays closed"
    world.sync_holders()
    world.guest.check_content()
    world.settle()
    assert cluster.held("h1") == {}
    world.guest.check_no_leaks()
    pr = op.progress()
    assert pr["state"] == "done" and pr["fault"] is None and len(pr["parts"]) == 1
    assert pr["progress"]["pages_total"] == pr["progress"]["pages_done"] == 24
    assert pr["progress"]["bytes_done"] == 24 * PAGE_SIZE and pr["progress"]["eta_s"] == 0
    # Not busy any more: the part can move on.
    op2 = world.ops.partial_migration(PATH, world.ram, "h3", cluster.endpoint("h1"))
    assert op2.wait(10) and op2.state is OpState.DONE
    assert world.at("h1") == list(range(24))


def test_partial_migration_to_a_host_already_holding_a_part(world: World,
                                                            cluster: Cluster) -> None:
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h2"))
    assert op.wait(10) and op.state is OpState.DONE, op.error
    assert world.at("h2") == list(range(40)) and world.at("h1") == []
    assert world.backend.active_holders() == {2: "h2"}
    world.guest.check_content()
    world.settle()
    world.guest.check_no_leaks()


def test_partial_migration_to_the_main_host(world: World, cluster: Cluster) -> None:
    op = world.ops.partial_migration(PATH, world.ram, "h2", cluster.endpoint(MAIN))
    assert op.wait(10) and op.state is OpState.DONE, op.error
    assert world.at("h2") == [] and world.local() == list(range(24, 44))
    assert world.backend.active_holders() == {1: "h1"}
    assert world.table.push_enabled, "a partial migration does not stop paging out"
    world.guest.check_content()
    world.settle()
    world.guest.check_no_leaks()


def test_partial_migration_with_a_bandwidth_cap_and_abort(world: World,
                                                          cluster: Cluster) -> None:
    # 24 pages at 96 KiB/s: about a second; aborted after the first region
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"),
                                     max_rate=96 * 1024)
    assert op.transfers[0].max_rate == 96 * 1024
    assert wait_for(lambda: int(op.progress()["progress"]["copied"]) > 0, 5)
    with pytest.raises(OperationError) as busy:
        world.ops.partial_migration(PATH, world.ram, "h2", cluster.endpoint("h3"))
    assert busy.value.errno == 16 and op.id in str(busy.value)
    with pytest.raises(OperationError) as busy:
        world.ops.reintegration(PATH, world.ram)
    assert busy.value.errno == 16
    reply = world.ops.abort(op.id)
    assert reply["id"] == op.id
    assert op.wait(5), "the abort did not end the operation"
    assert op.state is OpState.ABORTED and op.error == "aborted by request"
    assert world.at("h1") == list(range(24)) and world.at("h3") == []
    assert world.backend.active_holders() == {1: "h1", 2: "h2"}, "the new holder is not retired"
    assert cluster.held("h3", op.transfers[0].key) == {} and cluster.held("h3") == {}
    with pytest.raises(OperationError) as ended:
        world.ops.abort(op.id)
    assert ended.value.errno == 16
    # Not busy any more.
    op2 = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"))
    assert op2.wait(10) and op2.state is OpState.DONE
    assert [o["id"] for o in world.ops.all()] == [op.id, op2.id]


def test_a_repeated_request_gets_its_operation_back(world: World, cluster: Cluster) -> None:
    if "request_id" not in Operations.partial_migration.__code__.co_varnames:
        pytest.skip("no request ids in this version")
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"),
                                     max_rate=96 * 1024, request_id="r-1")
    again = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"),
                                        request_id="r-1")
    assert again is op and op.progress()["request_id"] == "r-1"
    world.ops.abort(op.id)
    assert op.wait(5)
    # Also once it ended, and whatever the request: the id names the operation.
    assert world.ops.reintegration(PATH, world.ram, request_id="r-1") is op
    other = world.ops.reintegration(PATH, world.ram, request_id="r-2")
    assert other is not op and other.wait(10) and other.state is OpState.DONE
    assert len(world.ops.all()) == 2


def test_partial_migration_to_a_dead_destination_fails(world: World,
                                                       cluster: Cluster) -> None:
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"),
                                     max_rate=96 * 1024)
    assert wait_for(lambda: int(op.progress()["progress"]["copied"]) > 0, 5)
    cluster.hosts["h3"].server.stop()
    assert op.wait(15), "the failure did not end the operation"
    assert op.state is OpState.FAILED and op.error and op.error.startswith("h1: ")
    assert world.at("h1") == list(range(24))
    assert world.backend.holder_of_host("h3") == 0, "the failed new holder is retired"
    world.guest.check_content()


def test_partial_migration_to_an_unreachable_host_is_not_started(world: World) -> None:
    before = set(world.table.closed_holders)
    with pytest.raises(FabricError):
        world.ops.partial_migration(PATH, world.ram, "h1",
                                    Endpoint("h9", "127.0.0.1", _unused_port()))
    assert world.ops.all() == [] and world.ops._busy == {}
    assert world.backend.holder_of_host("h9") == 0
    assert world.backend.active_holders() == {1: "h1", 2: "h2"}
    assert world.table.closed_holders - before <= {3}   # the retired holder's number


def test_refused_requests_change_nothing(world: World, cluster: Cluster) -> None:
    h3 = cluster.endpoint("h3")
    cases: list[tuple[Any, int, str]] = [
        (lambda: world.ops.partial_migration(PATH, world.ram, "h1", h3, strategy="fast"),
         22, "unknown strategy"),
        (lambda: world.ops.partial_migration(PATH, world.ram, "h3", h3), 2, "holds no part"),
        (lambda: world.ops.partial_migration(PATH, world.ram, MAIN, h3), 2, "holds no part"),
        (lambda: world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h1")),
         22, "differ"),
        (lambda: world.ops.partial_migration(PATH, world.ram, "h1", h3, max_rate=0),
         22, "cap must be positive"),
        (lambda: world.ops.reintegration(PATH, world.ram, strategy="fast"),
         22, "unknown strategy"),
    ]
    for call, errno_, text in cases:
        with pytest.raises(OperationError, match=text) as exc:
            call()
        assert exc.value.errno == errno_, text
    assert world.ops.all() == [] and world.ops._busy == {}
    assert world.backend.active_holders() == {1: "h1", 2: "h2"}
    assert world.table.closed_holders == set() and world.table.push_enabled
    with pytest.raises(OperationError) as missing:
        world.ops.get("main-7")
    assert missing.value.errno == 2
    with pytest.raises(OperationError) as missing:
        world.ops.abort("main-7")
    assert missing.value.errno == 2


def test_broken_and_unsplit_vms_are_refused(world: World, cluster: Cluster) -> None:
    world.ram.lost_pages.add(3)
    with pytest.raises(OperationError, match="broken") as exc:
        world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"))
    assert exc.value.errno == 5
    with pytest.raises(OperationError, match="broken"):
        world.ops.reintegration(PATH, world.ram)
    plain = RamFile(2, PageStore(8))
    plain.resize(4 * PAGE_SIZE)
    for call in (lambda: world.ops.partial_migration("/x", plain, "h1", cluster.endpoint("h3")),
                 lambda: world.ops.reintegration("/x", plain)):
        with pytest.raises(OperationError, match="not a split-memory instance"):
            call()
    assert world.ops.all() == []


def test_reintegration_needs_room_in_the_local_store(cluster: Cluster) -> None:
    w = World(cluster, store_pages=40)   # 40 remote pages, 4 local: 36 free
    try:
        with pytest.raises(OperationError, match="36 free slots, 40 pages") as exc:
            w.ops.reintegration(PATH, w.ram)
        assert exc.value.errno == 28
        assert w.ops.all() == [] and w.table.push_enabled
        assert w.table.closed_holders == set()
    finally:
        w.close()


# -- reintegration ----------------------------------------------------------------------


def test_reintegration_brings_every_part_home_in_parallel(world: World,
                                                          cluster: Cluster) -> None:
    op = world.ops.reintegration(PATH, world.ram)
    assert op.kind == "reintegration" and op.source is None and op.dest == MAIN
    assert len(op.transfers) == 2
    assert op.wait(10), "the reintegration did not finish"
    assert op.state is OpState.DONE, op.error
    assert world.local() == list(range(44))
    assert not world.table.push_enabled, "paging out stays off after a reintegration"
    assert world.backend.active_holders() == {}
    world.guest.check_content()
    world.settle()
    assert cluster.held("h1") == {} and cluster.held("h2") == {}
    pr = op.progress()
    assert [p["source"] for p in pr["parts"]] == ["h1", "h2"]
    total = pr["progress"]
    assert total["pages_total"] == 40 == sum(p["pages_total"] for p in pr["parts"])
    assert total["pages_done"] == 40 and total["switched"] == 40
    assert total["bytes_total"] == 40 * PAGE_SIZE and total["eta_s"] == 0


def test_reintegration_of_a_vm_with_no_part_left_ends(world: World) -> None:
    """A second reintegration (every holder already retired) has nothing to move:
    it must be refused or end at once, never stay running with the path busy."""
    op = world.ops.reintegration(PATH, world.ram)
    assert op.wait(10) and op.state is OpState.DONE
    try:
        again = world.ops.reintegration(PATH, world.ram)
    except OperationError:
        return
    ended = again.wait(1)
    busy = dict(world.ops._busy)
    if not ended:
        world.ops.abort(again.id)
    assert ended, (
        f"a reintegration with no holder left never ends: {again.id} stays "
        f"{again.state.value} (no PartTransfer to finish it), an abort does not end it "
        f"either ({again.wait(0.2)=}), and {PATH} stays busy ({busy})")


def test_reintegration_that_cannot_start_leaves_paging_out_on(world: World,
                                                              cluster: Cluster) -> None:
    """h2 is down: the reintegration is not started (the caller gets the error);
    the VM must keep paging out as before, its holders open."""
    cluster.hosts["h2"].server.stop()
    with pytest.raises(FabricError):
        world.ops.reintegration(PATH, world.ram)
    assert world.ops.all() == [] and world.ops._busy == {}
    assert world.table.push_enabled and world.table.closed_holders == set(), (
        f"a reintegration that failed to start left paging out stopped "
        f"(push_enabled={world.table.push_enabled}, closed holders "
        f"{sorted(world.table.closed_holders)})")


def test_reintegration_abort(world: World, cluster: Cluster,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Aborted while both parts are on their way (each driver holds its first
    region, staged here): what came home stays home, the rest at its holder."""
    local = world.ops.local
    entered = threading.Barrier(3, timeout=5)
    release = threading.Event()

    def take(key: uuid.UUID, pages: Sequence[int]) -> dict[int, bytes]:
        if not release.is_set():
            entered.wait()
            assert release.wait(5)
        return local.take(key, pages)

    world.ops.local = LocalStaging(take, local.drop, local.drop_all)
    monkeypatch.setattr(operations, "PartTransfer",
                        functools.partial(transfer.PartTransfer, region_pages=8))
    op = world.ops.reintegration(PATH, world.ram)
    entered.wait()
    world.ops.abort(op.id)
    release.set()
    assert op.wait(5)
    assert op.state is OpState.ABORTED and "aborted by request" in (op.error or "")
    assert len(world.local()) == 4 + 16, "each part brings its first region home"
    assert len(world.at("h1")) == 16 and len(world.at("h2")) == 8
    assert world.backend.active_holders() == {1: "h1", 2: "h2"}
    world.guest.check_content()
    assert cluster.held(MAIN, op.transfers[0].key) == {}
    assert cluster.held(MAIN, op.transfers[1].key) == {}


# -- naive strategies -------------------------------------------------------------------


def test_naive_reintegration_gathers_every_part(world: World, cluster: Cluster) -> None:
    op = world.ops.reintegration(PATH, world.ram, strategy="naive")
    assert op.wait(10) and op.state is OpState.DONE, op.error
    assert world.local() == list(range(44))
    assert world.backend.active_holders() == {}
    world.guest.check_content()
    pr = op.progress()
    assert pr["strategy"] == "naive" and pr["naive"]["pages_total"] == 40
    assert pr["progress"]["pages_done"] == pr["progress"]["pages_total"] == 40
    assert pr["progress"]["bytes_done"] == 40 * PAGE_SIZE
    world.settle()
    assert cluster.held("h1") == {} and cluster.held("h2") == {}


def test_naive_partial_migration_to_a_new_host(world: World, cluster: Cluster) -> None:
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"),
                                     strategy="naive")
    assert op.wait(10), "the naive partial migration did not finish"
    assert op.state is OpState.DONE, op.error
    assert world.at("h1") == [], "the source still holds pages"
    assert world.local() == [], "pages left in the local store after the re-split"
    world.guest.holders = {i + 1: s.name for i, s in enumerate(world.backend.sub_hosts)}
    world.guest.check_content()
    pr = op.progress()["progress"]
    assert pr["pages_done"] == pr["pages_total"] == 40 + 44
    assert world.backend.holder_of_host("h1") == 0
    # The VM is split again without the source: over the holders it kept, and the
    # destination.
    assert world.backend.holder_of_host("h2") == 2, (
        f"h2, a holder the VM keeps, was retired by the gather and never takes pages "
        f"again (holders now: {world.backend.active_holders()}, pages on h2: "
        f"{len(world.at('h2'))})")


def test_naive_partial_migration_to_the_main_host_ends(world: World, cluster: Cluster) -> None:
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint(MAIN),
                                     strategy="naive")
    finished = op.wait(2)
    stored = len(world.local())
    assert finished, (
        f"the naive partial migration to the main host never ends: the gather retired "
        f"every holder, so the re-split finds no sub-host to push to ({stored} pages "
        f"stay in the local store; holders: {world.backend.active_holders()})")
    assert op.state is OpState.DONE and world.at("h1") == []
    world.guest.check_content()


def test_naive_abort(world: World, cluster: Cluster) -> None:
    # No pusher: the re-split waits for it for ever, until aborted.
    assert world.pusher is not None
    world.pusher.stop()
    op = world.ops.partial_migration(PATH, world.ram, "h1", cluster.endpoint("h3"),
                                     strategy="naive")
    assert wait_for(lambda: int(op.progress()["progress"]["copied"]) == 40, 5)
    assert op.state is OpState.RUNNING
    world.ops.abort(op.id)
    assert op.wait(5) and op.state is OpState.ABORTED
    assert op.error == "aborted by request" and world.ops._busy == {}
    world.guest.check_content()


# -- progress of an operation -----------------------------------------------------------


class FakeTransfer:
    def __init__(self, **progress: int) -> None:
        keys = ("pages_total", "pages_done", "bytes_total", "bytes_done", "copied", "resent",
                "invalidated", "missing", "switched", "orphans", "page_ins_from_source",
                "page_outs_to_source")
        self._progress = {k: progress.get(k, 0) for k in keys}

    def progress(self) -> dict[str, Any]:
        return dict(self._progress)

    def abort(self) -> None:
        self._progress["aborted"] = 1


def test_progress_adds_up_the_parts_and_the_naive_counters() -> None:
    op = Operation("m-1", "reintegration", str(uuid.uuid4()), PATH, "ipmigrate", None, "m")
    op.transfers = [FakeTransfer(pages_total=10, pages_done=4, bytes_total=10 * PAGE_SIZE,
                                 bytes_done=4 * PAGE_SIZE, resent=2, invalidated=1),
                    FakeTransfer(pages_total=30, pages_done=6, bytes_total=30 * PAGE_SIZE,
                                 bytes_done=6 * PAGE_SIZE, orphans=3)]  # type: ignore[list-item]
    op.started_at -= 2.0
    pr = op.progress()
    total = pr["progress"]
    assert total["pages_total"] == 40 and total["pages_done"] == 10
    assert total["bytes_done"] == 10 * PAGE_SIZE and total["resent"] == 2
    assert total["invalidated"] == 1 and total["orphans"] == 3
    rate = total["rate_bytes_s"]
    assert 10 * PAGE_SIZE / 2.5 < rate <= 10 * PAGE_SIZE / 2.0
    assert total["eta_s"] == pytest.approx(30 * PAGE_SIZE / rate, abs=0.1)
    assert pr["state"] == "running" and pr["ended_at"] is None and len(pr["parts"]) == 2
    assert "naive" not in pr
    op.naive.update(pages_total=5, pages_done=5, bytes_total=5 * PAGE_SIZE,
                    bytes_done=5 * PAGE_SIZE, copied=5)
    total = op.progress()["progress"]
    assert total["pages_total"] == 45 and total["copied"] == 5
    op.abort()
    assert op._abort.is_set() and all("aborted" in t._progress for t in op.transfers)
    op._finish(OpState.ABORTED, "aborted by request")
    pr = op.progress()
    assert pr["state"] == "aborted" and pr["fault"] == "aborted by request"
    assert pr["ended_at"] is not None and op.wait(0)
    # The elapsed time stops at the end.
    assert op.progress()["progress"]["elapsed_s"] == pr["progress"]["elapsed_s"]


def test_progress_of_an_operation_with_nothing_to_do() -> None:
    op = Operation("m-1", "reintegration", "vm", PATH, "naive", None, "m")
    op._finish(OpState.DONE)
    total = op.progress()["progress"]
    assert total["bytes_total"] == 0 and total["rate_bytes_s"] == 0 and total["eta_s"] == 0
