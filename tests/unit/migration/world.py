"""A split VM's hosts around one real PageTable, for checking part moves.

:class:`World` extends the kernel model of ``tests/unit/memfs/kernel_model.py``
(the main host's page cache and pager, driving a real
:class:`~nova_ipmigrate.memfs.pages.PageTable`) with what the other hosts hold:

* ``remote[h]``: holder ``h``'s copies under the VM key, page -> content
  (what ``SubHostStore`` holds for the VM), and ``origin[(h, p)]``: how that
  copy got there (``"push"``, ``"commit"`` by move ``m``, or ``"switched"`` once
  a switch made the directory point at a committed copy);
* ``staging[(h, m)]``: the copies staged under move ``m``'s staging key at host
  ``h`` (host 0: the main host's own fabric store, for moves to the main host).

Every actor's I/O is split into steps so that tests can interleave anything
between them: the pusher (drops, then candidates + choice of a holder, the put
at that holder, ``push_done``), page-ins of remote pages (fetch from the holder
the directory names at fetch time, fill later), and the part-move driver
(:class:`Driver`: the steps of ``migration/transfer.py``'s ``PartTransfer.run``
in its order, each one its own method).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nova_ipmigrate.memfs.pages import PageState
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.store import StoreFull
from nova_ipmigrate.migration.consistency import MAIN_HOST, PartMove, Phase, Region
from tests.unit.memfs.kernel_model import ZERO, KernelModel

REMOTE = PageState.REMOTE


@dataclass
class Push:
    """One push in flight (the pusher thread has at most one)."""

    cands: list[tuple[int, int]]
    data: list[bytes]
    holder: int
    put: bool = False


@dataclass
class Flight:
    """A copy request in flight (a pool thread of the driver): pages not copied yet."""

    region: Region
    to_copy: list[int]
    missing: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.to_copy


@dataclass
class Driver:
    """One PartTransfer: its PartMove and where ``run()`` is (``pc``).

    ``pc``: ``top`` (the pipeline's fill loop: flush invalidations, then
    ``ready``: take the next region), ``wait`` (regions in flight, wait for one
    to land), ``converge``, ``finish_local``, ``commit_set``, ``commit``,
    ``switch``, ``cleanup``; then ``done`` or ``aborted``.
    """

    move: PartMove
    mid: int
    new_dest: bool
    region_pages: int
    depth: int = 2
    bulk: bool = True
    pc: str = "top"
    flying: list[Flight] = field(default_factory=list)
    commit: list[int] = field(default_factory=list)
    switched: set[int] = field(default_factory=set)

    @property
    def source(self) -> int:
        return self.move.source

    @property
    def dest(self) -> int:
        return self.move.dest

    @property
    def key(self) -> tuple[int, int]:
        return (self.dest, self.mid)


class World(KernelModel):
    def __init__(self, npages: int, store_pages: int | None = None, holders: int = 3) -> None:
        super().__init__(npages, store_pages, remote=True)
        self.nholders = holders
        self.remote: dict[int, dict[int, bytes]] = {h: {} for h in range(1, holders + 1)}
        self.origin: dict[tuple[int, int], tuple[str, int]] = {}
        self.staging: dict[tuple[int, int], dict[int, bytes]] = {}
        #: SubHostStore._put_seq: (host, key, page) -> sequence number of the put that
        #: wrote it (key "vm", or a move's id for its staging key)
        self.put_seq: dict[tuple[int, object, int], int] = {}
        self._seq = 0
        self.retired: set[int] = set()
        self.pushing: Push | None = None
        self.fetches: dict[int, tuple[int, bytes]] = {}
        self.drv: Driver | None = None
        self.finished: list[Driver] = []
        self._mid = 0
        self._tag = 0

    def _put(self, host: int, key: object, p: int, data: bytes) -> None:
        """SubHostStore.put_pages of one page."""
        box = self.remote[host] if key == "vm" else self.staging.setdefault(
            (host, key), {})  # type: ignore[arg-type]
        box[p] = data
        self._seq += 1
        self.put_seq[(host, key, p)] = self._seq

    # -- the guest ------------------------------------------------------------------------

    def next_tag(self) -> int:
        self._tag += 1
        return self._tag

    def fetch(self, p: int) -> tuple[int, bytes]:
        """Read ``p`` from the holder the directory names now (the fabric GET)."""
        (h,) = self.table.holder_of([p])
        assert self.table.state[p] == REMOTE
        data = self.remote.get(h, {}).get(p)
        assert data is not None, (
            f"page {p}: the directory names holder {h}, which does not hold it (lost)")
        return h, data

    def fault(self, p: int) -> None:
        """A READ of one page: remote pages are fetched from the holder the directory names."""
        if p in self.cache:
            return
        assert p not in self.fetches, "a READ of a page whose READ is in flight"
        buf = memoryview(bytearray(PAGE_SIZE))
        remote = self.table.read(p, 1, buf)
        while remote:
            holder, data = self.fetch(p)
            try:
                ok = self.table.fill_remote(p, data, holder)
            except StoreFull:
                self.pin()  # what memfs waits for: the pinner frees copies
                ok = self.table.fill_remote(p, data, holder)  # still full: the READ fails
            if ok:
                buf[:] = data
                break
            remote = self.table.read(p, 1, buf)  # the page moved meanwhile: ask again
        self._arrived(p, bytes(buf))

    def _arrived(self, p: int, data: bytes) -> None:
        assert data == self.truth.get(p, ZERO), (
            f"page-in of page {p} returned stale data: {_tag_of(data)}, "
            f"the guest last wrote {_tag_of(self.truth.get(p, ZERO))}")
        self.cache[p] = bytearray(data)

    def fetch_begin(self, p: int) -> bool:
        """A READ of a remote page whose fill comes later (the fabric round trip)."""
        if p in self.cache or p in self.fetches or self.table.state[p] != REMOTE:
            return False
        buf = memoryview(bytearray(PAGE_SIZE))
        assert self.table.read(p, 1, buf) == [p]
        self.fetches[p] = self.fetch(p)
        return True

    def fetch_end(self, p: int) -> None:
        holder, data = self.fetches.pop(p)
        try:
            ok = self.table.fill_remote(p, data, holder)
        except StoreFull:
            return  # the READ fails; nothing changed
        if ok:
            self._arrived(p, data)
            return
        try:
            self.fault(p)  # moved or brought home meanwhile: memfs asks again
        except StoreFull:
            pass

    def write_remote(self, p: int) -> None:
        """write(2) of a full page to a page held by a sub-host (no page cache)."""
        v = _value(self.next_tag())
        self.table.write(p, 0, memoryview(v))
        self.truth[p] = v

    def evict_only(self, pages: list[int]) -> int:
        """An eviction window over just ``pages`` (those resident): page them out."""
        win = self.table.begin_window(self.npages)
        if win is None:
            return 0
        self.table.abort_pages(win, [p for p in win.pages if p not in pages])
        self.snapshot(win)
        return self.finish(win)

    def part_pages(self) -> list[int]:
        """Pages the move is busy with: its part at the source, its commit, its region."""
        d = self.drv
        if d is None:
            return []
        if d.commit or d.move._committed:
            return sorted(set(d.commit) | d.move._committed)
        if d.flying:
            return sorted({p for f in d.flying for p in f.region.pages})
        t = self.table
        return [p for p in range(self.npages)
                if t.state[p] == REMOTE and t.holder[p] == d.source]

    def unused(self, h: int) -> bool:
        """Holder ``h`` has never held a page (a sub-host new to the VM)."""
        return (not self.remote[h] and not any(k[0] == h for k in self.origin)
                and not (self.pushing is not None and self.pushing.holder == h)
                and h not in self.table.holder)

    def busy(self, p: int) -> bool:
        """The guest cannot touch a page while its READ is in flight (folio locked)."""
        return p in self.fetches

    # -- the pusher -------------------------------------------------------------------------

    def drops(self) -> None:
        for holder, pages in self.table.take_drops().items():
            for p in pages:
                self.remote.get(holder, {}).pop(p, None)
                self.origin.pop((holder, p), None)

    def open_holders(self) -> list[int]:
        return [h for h in range(1, self.nholders + 1)
                if h not in self.table.closed_holders and h not in self.retired]

    def push_begin(self, n: int, pick: int = 0,  # type: ignore[override]
                   prefer: int | None = None) -> bool:
        """pager.push_some up to the put: drops first, then candidates and a holder.

        The holder is ``prefer`` if it is open, else the ``pick``-th open one.
        """
        assert self.pushing is None
        self.drops()
        buf = memoryview(bytearray(n * PAGE_SIZE))
        cands = self.table.push_candidates(n, buf)
        if not cands:
            return False
        # FabricRemotePaging.push(exclude=closed_holders) as of now
        open_ = self.open_holders()
        if not open_:
            self.table.push_failed(cands)
            return False
        data = [bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) for i in range(len(cands))]
        holder = prefer if prefer in open_ else open_[pick % len(open_)]
        self.pushing = Push(cands, data, holder)
        return True

    def push_put(self) -> None:
        assert self.pushing is not None and not self.pushing.put
        for (p, _), d in zip(self.pushing.cands, self.pushing.data, strict=True):
            self._put(self.pushing.holder, "vm", p, d)
            self.origin[(self.pushing.holder, p)] = ("push", 0)
        self.pushing.put = True

    def push_finish(self) -> None:
        assert self.pushing is not None and self.pushing.put
        push, self.pushing = self.pushing, None
        self.table.push_done(push.cands, push.holder)

    def push_all(self, holder: int) -> None:
        """Push every paged-out page to ``holder`` at once (setting up)."""
        while True:
            self.drops()
            buf = memoryview(bytearray(self.npages * PAGE_SIZE))
            cands = self.table.push_candidates(self.npages, buf)
            if not cands:
                break
            for i, (p, _) in enumerate(cands):
                self._put(holder, "vm", p, bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))
                self.origin[(holder, p)] = ("push", 0)
            self.table.push_done(cands, holder)
        self.drops()

    def place(self, pages: list[int], holder: int) -> None:
        """Write ``pages`` with fresh content and page them out to ``holder``."""
        for p in pages:
            self.store_to(p, self.next_tag())
        self.evict_only(pages)
        self.push_all(holder)
        assert all(self.table.state[p] == REMOTE and self.table.holder[p] == holder
                   for p in pages), self.table.page_map()

    # -- the part-move driver (transfer.PartTransfer) -----------------------------------------

    def start_move(self, source: int, dest: int, new_dest: bool = False,
                   region_pages: int = 4, depth: int = 2) -> Driver:
        assert self.drv is None
        self._mid += 1
        t = self.table
        drv = Driver(PartMove(t, source, dest), self._mid, new_dest, region_pages, depth)
        if new_dest:
            t.closed_holders.add(dest)  # operations: a new holder takes no page-outs
        with t.lock:
            drv.move.start()
            t.moves.append(drv.move)
        self.staging[drv.key] = {}
        self.drv = drv
        return drv

    def _d(self, *pcs: str) -> Driver:
        assert self.drv is not None and self.drv.pc in pcs, (self.drv and self.drv.pc, pcs)
        return self.drv

    def flush(self) -> list[int]:
        """_flush_invalidations: drop the stale staged copies at the destination."""
        d = self._d("top")
        with self.table.lock:
            stale = d.move.take_invalidations()
        staged = self.staging.get(d.key, {})
        for p in stale:
            staged.pop(p, None)
        d.pc = "ready"
        return stale

    def next_region(self) -> Region | None:
        """PartMove.next_copy, as transfer.py takes it: the invalidations queued since
        the flush, then the next region, under one lock (the stale staged copies are
        dropped before the copy request goes out)."""
        d = self._d("ready")
        with self.table.lock:
            stale, region = d.move.next_copy(d.region_pages, d.bulk)
        staged = self.staging.get(d.key, {})
        for p in stale:
            staged.pop(p, None)
        if region is not None:
            d.flying.append(Flight(region, list(region.pages)))
            d.pc = "top" if len(d.flying) < d.depth else "wait"
        elif d.flying:
            d.pc = "wait"
        else:
            self._pipeline_done(d)
        return region

    def _pipeline_done(self, d: Driver) -> None:
        if d.bulk:
            d.pc = "converge"
        elif d.dest == MAIN_HOST:
            d.pc = "finish_local"
        else:
            d.pc = "commit_set"

    def copy_some(self, n: int | None = None, which: int = 0) -> None:
        """The source copies (the next ``n`` of) a region's pages straight to the destination.

        ``which``: the in-flight region (index, modulo); the copies run in the
        driver's pool threads, whatever the driver does meanwhile.
        """
        d = self.drv
        assert d is not None
        todo = [f for f in d.flying if not f.complete]
        assert todo
        f = todo[which % len(todo)]
        n = len(f.to_copy) if n is None else max(1, n)
        held = self.remote[d.source]
        for p in f.to_copy[:n]:
            data = held.get(p)
            if data is None:
                f.missing.append(p)
            else:
                self._put(d.dest, d.mid, p, data)
        del f.to_copy[:n]

    def landable(self) -> bool:
        d = self.drv
        return d is not None and d.pc == "wait" and any(f.complete for f in d.flying)

    def region_done(self) -> list[int]:
        """_landed: the first complete region (by first page) is judged."""
        d = self._d("wait")
        done = sorted((f for f in d.flying if f.complete), key=lambda f: f.region.pages[0])
        assert done
        f = done[0]
        d.flying.remove(f)
        staged = None
        if d.dest == MAIN_HOST:  # LocalStaging.take: the staged pages found, removed
            box = self.staging.get(d.key, {})
            staged = {p: box.pop(p) for p in f.region.pages
                      if p not in f.missing and p in box}
        try:
            with self.table.lock:
                good = d.move.region_done(f.region, f.missing, staged)
        except StoreFull:
            self.abort()
            return []
        if not any(x.complete for x in d.flying):
            d.pc = "top"
        return good

    def converge(self) -> None:
        d = self._d("converge")
        with self.table.lock:
            d.move.converge()
        d.bulk = False
        d.pc = "top"

    def commit_set(self) -> list[int]:
        d = self._d("commit_set")
        with self.table.lock:
            d.commit = d.move.commit_set()
        d.pc = "commit" if d.commit else "switch"
        return d.commit

    def dest_commits(self) -> bool:
        """SubHostStore.commit_pages at the destination (all or nothing), then committed()."""
        d = self._d("commit")
        staged = self.staging.get(d.key, {})
        if any(p not in staged for p in d.commit):
            with self.table.lock:  # PagesNotHeldError: TransferFailed, roll back
                d.move.committed(d.commit)
            self.abort()
            return False
        held = self.remote[d.dest]
        for p in d.commit:
            staged_at = self.put_seq.pop((d.dest, d.mid, p), 0)
            data = staged.pop(p)
            if p in held and self.put_seq.get((d.dest, "vm", p), 0) > staged_at:
                continue  # paged out there after the copy was staged: that copy is newer
            held[p] = data
            self.put_seq[(d.dest, "vm", p)] = staged_at
            self.origin[(d.dest, p)] = ("commit", d.mid)
        with self.table.lock:
            d.move.committed(d.commit)
        d.pc = "switch"
        return True

    def switch(self) -> int:
        d = self._d("switch")
        t = self.table
        before = [t.holder[p] if t.state[p] == REMOTE else -1 for p in range(self.npages)]
        with t.lock:
            left = d.move.switch()
        for p in range(self.npages):
            if before[p] == d.source and t.state[p] == REMOTE and t.holder[p] == d.dest:
                d.switched.add(p)
                assert self.origin.get((d.dest, p)) == ("commit", d.mid), (
                    f"page {p} switched to {d.dest}, whose copy is {self.origin.get((d.dest, p))}")
                self.origin[(d.dest, p)] = ("switched", d.mid)
        d.pc = "cleanup" if not left else "top"
        return left

    def finish_local(self) -> int:
        d = self._d("finish_local")
        with self.table.lock:
            left = d.move.finish_local()
        d.pc = "cleanup" if not left else "top"
        return left

    def cleanup(self) -> None:
        """_cleanup_after_switch, then what operations._part_done does."""
        d = self._d("cleanup")
        assert d.move.phase is Phase.SWITCHED
        for p in list(self.remote[d.source]):
            self.origin.pop((d.source, p), None)
        self.remote[d.source].clear()       # source_client.drop_vm(vm)
        self.staging.pop(d.key, None)       # dest drop_vm(staging key)
        with self.table.lock:
            self.table.moves.remove(d.move)
        self.retired.add(d.source)          # backend.retire(source); it stays closed
        if d.dest != MAIN_HOST:
            self.table.closed_holders.discard(d.dest)
        d.pc = "done"
        self.finished.append(d)
        self.drv = None

    def abort(self) -> list[int]:
        """_roll_back (operator abort, or a failed step): PartMove.abort, drop the staging key.

        The regions in flight are waited for (their copies land) and failed first.
        """
        d = self.drv
        assert d is not None and d.pc not in ("cleanup", "done")
        for f in list(d.flying):
            if f.to_copy:
                self.copy_some(len(f.to_copy), [x for x in d.flying if not x.complete].index(f))
            with self.table.lock:
                d.move.region_failed(f.region)
        d.flying.clear()
        with self.table.lock:
            orphans = d.move.abort()
            self.table.moves.remove(d.move)
        self.staging.pop(d.key, None)
        if d.new_dest:
            self.retired.add(d.dest)  # operations retires a new destination
        d.pc = "aborted"
        self.finished.append(d)
        self.drv = None
        return orphans

    def step(self) -> None:
        """The driver's next step, with every region in flight copied at once."""
        d = self.drv
        assert d is not None
        if d.pc == "wait" and not self.landable():
            self.copy_some()
            return
        {"top": self.flush, "ready": self.next_region, "wait": self.region_done,
         "converge": self.converge, "commit_set": self.commit_set,
         "commit": self.dest_commits, "switch": self.switch,
         "finish_local": self.finish_local, "cleanup": self.cleanup}[d.pc]()

    def run_move(self, source: int, dest: int, **kw: object) -> Driver:
        """A whole move with nothing interleaved."""
        d = self.start_move(source, dest, **kw)  # type: ignore[arg-type]
        while d.pc not in ("done", "aborted"):
            self.step()
        return d

    # -- checks ---------------------------------------------------------------------------------

    def check_all(self) -> None:
        self.check_current()
        self.check_move()
        self.check_slots()

    def check_current(self) -> None:
        """(a)+(b): what the directory points at is the guest's last write, for every page."""
        t = self.table
        for p in range(self.npages):
            want = self.truth.get(p, ZERO)
            if p in self.cache:
                assert bytes(self.cache[p]) == want, f"page {p}: page cache is stale"
                continue
            st = t.state[p]
            assert st != PageState.PINNED, f"page {p} pinned but not cached"
            if st == REMOTE:
                h = t.holder[p]
                got = self.remote.get(h, {}).get(p)
                assert got is not None, (
                    f"page {p}: the directory names holder {h}, which does not hold it "
                    f"(lost); map {t.page_map()}")
                assert got == want, (
                    f"page {p}: the directory names holder {h}, whose copy "
                    f"({self.origin.get((h, p))}) is stale: {_tag_of(got)}, "
                    f"the guest last wrote {_tag_of(want)}")
                # (c)/(e): never a copy that only a commit put there, unless switched
                o = self.origin.get((h, p))
                assert o is not None and o[0] in ("push", "switched"), (
                    f"page {p}: the directory names holder {h}, whose copy got there "
                    f"by {o} and was never switched")
                assert h not in self.retired, f"page {p} held by retired holder {h}"
            else:
                assert t.content(p) == want, f"page {p} lost on the main host"

    def check_move(self) -> None:
        """The move's own beliefs: every copy it holds valid is current; (d) after a switch."""
        d = self.drv
        t = self.table
        if d is not None and d.move.phase in (Phase.COPYING, Phase.CONVERGING):
            m = d.move
            staged = self.staging.get(d.key, {})
            for p in range(self.npages):
                if not (t.state[p] == REMOTE and t.holder[p] == d.source
                        and m.sent[p] and m.sent[p] == t.stamp[p] + 1):
                    continue
                want = self.truth.get(p, ZERO)
                if p in m._committed:
                    got = self.remote[d.dest].get(p)
                    where = "committed"
                else:
                    got = staged.get(p)
                    where = "staged"
                assert got == want, (
                    f"page {p}: the move holds its {where} copy at {d.dest} valid, but it is "
                    f"{None if got is None else _tag_of(got)}, the guest last wrote "
                    f"{_tag_of(want)}")
        if d is not None and d.move.phase is Phase.SWITCHED:
            left = [p for p in range(self.npages)
                    if t.state[p] == REMOTE and t.holder[p] == d.source]
            assert not left, f"pages {left} are still at the source after the switch"


def _value(tag: int) -> bytes:
    return tag.to_bytes(8, "little") * (PAGE_SIZE // 8)


def _tag_of(data: bytes) -> str:
    return f"tag {int.from_bytes(data[:8], 'little')}"
