"""The pager's eviction sequence and limit enforcement, without a kernel."""

from __future__ import annotations

from nova_ipmigrate.memfs.pager import Pager, PagerConfig
from nova_ipmigrate.memfs.pages import PageState
from nova_ipmigrate.memfs.protocol import NOTIFY_INVAL_INODE, OUT_HEADER, PAGE_SIZE
from nova_ipmigrate.memfs.ramfile import RamFile
from nova_ipmigrate.memfs.store import PageStore


def _ram(npages: int, store_pages: int, limit: int) -> RamFile:
    ram = RamFile(7, PageStore(store_pages), limit)
    ram.resize(npages * PAGE_SIZE)
    return ram


def _fault(ram: RamFile, pages: list[int]) -> None:
    assert ram.table is not None
    buf = memoryview(bytearray(PAGE_SIZE))
    for p in pages:
        ram.table.read(p, 1, buf)
        ram.table.write(p, 0, memoryview(p.to_bytes(8, "little") * 512))


def _pager(sent: list[tuple[int, int, int]], **kw: int) -> Pager:
    def notify(msg: bytes) -> None:
        _len, code, _u = OUT_HEADER.unpack_from(msg)
        assert code == 2  # INVAL_INODE
        sent.append(NOTIFY_INVAL_INODE.unpack_from(msg, OUT_HEADER.size))
    return Pager(PagerConfig(pin=False, **kw), lambda: [], notify, "/nonexistent")


def test_evict_sends_one_invalidation_per_contiguous_run() -> None:
    sent: list[tuple[int, int, int]] = []
    ram = _ram(16, 32, 0)
    _fault(ram, [1, 2, 3, 8, 9])
    assert _pager(sent).evict(ram, 16) == 5
    assert sent == [(7, PAGE_SIZE, 3 * PAGE_SIZE), (7, 8 * PAGE_SIZE, 2 * PAGE_SIZE)]
    assert ram.table is not None
    assert all(ram.table.state[p] == PageState.STORED for p in (1, 2, 3, 8, 9))


def test_enforce_limit_evicts_down_to_the_target() -> None:
    sent: list[tuple[int, int, int]] = []
    ram = _ram(100, 200, 40)
    _fault(ram, list(range(60)))
    out = _pager(sent, batch_pages=8, target_pct=50).enforce_limit(ram)
    assert ram.table is not None
    assert out == 40 and ram.table.resident == 20
    assert not ram.eviction_stalled


def test_full_store_stalls_eviction_and_stops_throttling() -> None:
    sent: list[tuple[int, int, int]] = []
    ram = _ram(64, 64, 8)
    assert ram.table is not None
    buf = memoryview(bytearray(PAGE_SIZE))
    for p in range(32):
        ram.table.read(p, 1, buf)      # cached-zero pages: a page-out needs a slot
    ram.store.allocate(ram.store.free)  # the store is full
    assert _pager(sent).enforce_limit(ram) == 0
    assert ram.eviction_stalled and sent == []
    assert ram.throttle(5.0) is False  # page-ins do not wait for a stalled evictor


def test_snapshot_failure_keeps_pinned_pages_resident() -> None:
    sent: list[tuple[int, int, int]] = []
    ram = _ram(8, 16, 0)
    _fault(ram, [0, 1])
    assert ram.table is not None
    cands = ram.table.pin_candidates(8)
    ram.table.pin_done(cands)          # pinned; the daemon has no fd (not attached)
    assert _pager(sent).evict(ram, 8) == 0
    assert sent == [] and ram.table.state[0] == PageState.PINNED
    assert ram.store.used == 0


def test_pin_some_needs_an_attached_file() -> None:
    ram = _ram(8, 16, 0)
    _fault(ram, [0])
    p = Pager(PagerConfig(pin=True), lambda: [], lambda m: None, "/nonexistent")
    assert p.pin_some(ram) is False


class _Remote:
    """What push_some uses of a RemotePaging backend: records pushes and drops."""

    def __init__(self) -> None:
        self.pushed: list[int] = []
        self.dropped: list[int] = []

    def push(self, vm: object, pages: list[int], data: object, exclude: object = ()) -> int:
        self.pushed += pages
        return 1

    def drop(self, vm: object, holder: int, pages: list[int]) -> None:
        self.dropped += pages

    def holder_name(self, holder: int) -> str:
        return f"sub{holder}"


def _paged_out(frozen: bool = False, quiet: bool = False) -> tuple[RamFile, _Remote]:
    """A split RAM file with 4 pages paged out (to push) and 1 stale copy to drop."""
    import uuid
    ram = _ram(8, 16, 0)
    remote = _Remote()
    ram.set_remote(uuid.uuid4(), remote)  # type: ignore[arg-type]
    _fault(ram, [0, 1, 2, 3])
    assert ram.table is not None
    win = ram.table.begin_window(4)
    assert win is not None
    ram.table.end_window(win)
    ram.table._drop_queue.append((1, 7))
    ram.frozen, ram.quiet = frozen, quiet
    return ram, remote


def test_a_frozen_file_sends_drops_but_pushes_nothing() -> None:
    """Main-host move away: the directory must stop changing, stale copies still go."""
    buf = memoryview(bytearray(8 * PAGE_SIZE))
    ram, remote = _paged_out(frozen=True)
    _pager([]).push_some(ram, buf)
    assert remote.dropped == [7] and remote.pushed == []
    ram.frozen = False
    _pager([]).push_some(ram, buf)
    assert remote.pushed == [1, 2, 3]   # page 0 is all zeros: elided, nothing to push


def test_a_quiet_file_sends_nothing_at_all() -> None:
    """Main-host move here, not committed: the old main host may resume."""
    buf = memoryview(bytearray(8 * PAGE_SIZE))
    ram, remote = _paged_out(quiet=True)
    assert not _pager([]).push_some(ram, buf)
    assert remote.dropped == [] and remote.pushed == []
