"""The I/O of a part move, run by the main host's agent: one driver per moving part.

The driver runs the :class:`~nova_ipmigrate.migration.consistency.PartMove`
state machine: it asks the source sub-host to copy a region of its part
straight to the destination (fabric ``COPY_PAGES``; the data never passes
through the main host unless the main host is the destination), drops staged
copies that went stale, converges, has the destination commit the staged
pages, and switches ownership in the directory. Every directory step is taken
under the page table's lock; no lock is held across the network. Any failure
(destination or link down, operator abort) rolls back: the source stays the
owner of every page it holds, the destination's staged copies are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

from nova_ipmigrate.fabric import wire
from nova_ipmigrate.fabric.client import FabricClient
from nova_ipmigrate.fabric.errors import FabricError
from nova_ipmigrate.memfs.pages import PageTable
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.migration.consistency import MAIN_HOST, PartMove, Phase, Region

LOG = logging.getLogger(__name__)

#: pages per copy request (one fabric request names at most MAX_PAGES)
REGION_PAGES = wire.MAX_PAGES
#: how long a move goes on asking its source for pages the source answers "not
#: held" for (and nothing else) before it fails; the poll interval meanwhile
MISSING_TIMEOUT_S = 300.0
MISSING_POLL_S = 0.1


class Aborted(Exception):
    """The operator aborted the move."""


class TransferFailed(Exception):
    """A step of the move failed (destination, source or link); the move rolled back."""


@dataclass
class Endpoint:
    """Where a host's fabric server listens."""

    name: str
    address: str
    port: int


@dataclass
class LocalStaging:
    """The main host's own fabric store, when the main host is the destination."""

    #: (key, pages) -> {page: content} of the staged pages found; removes them
    take: Callable[[uuid.UUID, Sequence[int]], dict[int, bytes]]
    drop: Callable[[uuid.UUID, Sequence[int]], object]
    drop_all: Callable[[uuid.UUID], object]


class PartTransfer:
    """Moves ``source``'s part of one VM to ``dest`` (a holder number, or MAIN_HOST)."""

    def __init__(self, table: PageTable, vm: uuid.UUID, source: int, dest: int,
                 dest_endpoint: Endpoint, source_client: FabricClient,
                 dest_client: FabricClient | None, local: LocalStaging | None = None,
                 region_pages: int = REGION_PAGES, copy_timeout: float = 120.0,
                 on_done: Callable[[PartTransfer], None] | None = None,
                 source_name: str = "", dest_name: str = "",
                 max_rate: float | None = None, depth: int = 2) -> None:
        if (dest == MAIN_HOST) != (local is not None) or (dest != MAIN_HOST
                                                           and dest_client is None):
            raise ValueError("a move to the main host stages locally, others at a client")
        self.table = table
        self.vm = vm
        self.move = PartMove(table, source, dest)
        self.dest_endpoint = dest_endpoint
        self.source_client = source_client
        self.dest_client = dest_client
        self.local = local
        self.region_pages = region_pages
        self.copy_timeout = copy_timeout
        #: see MISSING_TIMEOUT_S
        self.missing_timeout = MISSING_TIMEOUT_S
        self.key = uuid.uuid4()  # the staging key at the destination
        self.source_name = source_name or source_client.peer_name
        self.dest_name = dest_name or dest_endpoint.name
        self.error: str | None = None
        self._abort = threading.Event()
        self._on_done = on_done
        self._thread: threading.Thread | None = None
        self.finished = threading.Event()
        #: the destination became a holder of the VM for this move (retired if it fails)
        self.new_holder = False
        #: regions in flight at once (>= 1)
        self.depth = max(1, depth)
        #: bandwidth cap of the copy (bytes/s, None: line rate)
        self.max_rate = max_rate
        self._sent_bytes = 0
        self._t0 = time.monotonic()

    # -- control ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True,
                                        name=f"move-{self.source_name}-{self.dest_name}")
        self._thread.start()

    def abort(self) -> None:
        self._abort.set()

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    @property
    def phase(self) -> Phase:
        return self.move.phase

    def progress(self) -> dict[str, object]:
        with self.table.lock:
            out = self.move.progress()
        out.update(source=self.source_name, dest=self.dest_name, fault=self.error)
        return out

    # -- the move -------------------------------------------------------------------------

    def run(self) -> None:
        t = self.table
        with t.lock:
            self.move.start()
            t.moves.append(self.move)
        try:
            self._copy_all()
            with t.lock:
                self.move.converge()
            self._converge()
            self._cleanup_after_switch()
        except Exception as exc:
            if isinstance(exc, Aborted):
                self.error = "aborted by request"
            else:
                self.error = str(exc) or type(exc).__name__
                LOG.warning("move of %s's part of %s to %s failed: %s; rolling back",
                            self.source_name, self.vm, self.dest_name, self.error)
            self._roll_back()
        finally:
            with t.lock:
                if self.move in t.moves:
                    t.moves.remove(self.move)
            self.finished.set()
            if self._on_done is not None:
                self._on_done(self)

    def _check(self) -> None:
        if self._abort.is_set():
            raise Aborted()

    def _copy_all(self) -> None:
        """The bulk pass: every page of the part once (then the move converges)."""
        self._pipeline(bulk=True)

    def _converge(self) -> None:
        t = self.table
        c = self.move.counters
        stuck_since: float | None = None
        while True:
            self._check()
            before = (c.valid, c.missing)
            self._pipeline(bulk=False)
            # A round in which the source answered "not held" for every page it was
            # asked: the directory says it holds pages it does not have (yet: an old
            # main host's pages still on their way to its store, say). Poll slowly,
            # and give up only when that lasts: a page lost at the source must fail
            # the move, not keep it re-asking for ever.
            if c.valid == before[0] and c.missing > before[1]:
                now = time.monotonic()
                stuck_since = now if stuck_since is None else stuck_since
                if now - stuck_since > self.missing_timeout:
                    with t.lock:
                        gone = self.move.left_at_source()[:8]
                    raise TransferFailed(
                        f"{self.source_name} does not hold page(s) {gone} of {self.vm} "
                        f"that the page directory says it holds (for "
                        f"{now - stuck_since:.0f}s)")
                self._abort.wait(MISSING_POLL_S)
            else:
                stuck_since = None
            if self.move.dest == MAIN_HOST:
                with t.lock:
                    if not self.move.finish_local():
                        return
                continue
            with t.lock:
                commit = self.move.commit_set()
            if commit:
                assert self.dest_client is not None
                try:
                    self.dest_client.commit_pages(self.vm, self.key, commit)
                except FabricError as exc:
                    # It may have been applied (a lost reply): abort drops them as orphans.
                    with t.lock:
                        self.move.committed(commit)
                    raise TransferFailed(f"commit at {self.dest_name} failed: {exc}") from exc
                with t.lock:
                    self.move.committed(commit)
            self._check()
            with t.lock:
                left = self.move.switch()
            if not left:
                return

    def _pipeline(self, bulk: bool) -> None:
        """Copy regions until none is left, ``depth`` of them in flight at once.

        Overlapping regions keeps the link busy across region boundaries (the
        answer, the directory's check and the next request). On any failure
        the regions still in flight are waited for, so nothing lands at the
        destination after the move rolled back.
        """
        t = self.table
        flying: dict[futures.Future[tuple[int, list[int]]], Region] = {}
        pool = futures.ThreadPoolExecutor(max_workers=self.depth,
                                          thread_name_prefix=f"copy-{self.source_name}")
        try:
            while True:
                self._check()
                while len(flying) < self.depth:
                    with t.lock:
                        stale, region = self.move.next_copy(self.region_pages, bulk)
                    self._send_invalidations(stale)
                    if region is None:
                        break
                    flying[pool.submit(self._copy_request, region)] = region
                if not flying:
                    return
                done, _ = futures.wait(flying, return_when=futures.FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: flying[f].pages[0]):
                    self._landed(flying.pop(fut), fut)
        except BaseException:
            for fut, region in flying.items():
                try:
                    fut.result(timeout=self.copy_timeout)
                except Exception:
                    pass
                with t.lock:
                    self.move.region_failed(region)
            raise
        finally:
            pool.shutdown(wait=True)

    def _copy_request(self, region: Region) -> tuple[int, list[int]]:
        ep = self.dest_endpoint
        return self.source_client.copy_pages(self.vm, self.key, ep.name, ep.address, ep.port,
                                             region.pages, timeout=self.copy_timeout)

    def _landed(self, region: Region, fut: futures.Future[tuple[int, list[int]]]) -> None:
        try:
            _copied, missing = fut.result()
        except FabricError as exc:
            with self.table.lock:
                self.move.region_failed(region)
            raise TransferFailed(
                f"copy of {len(region.pages)} page(s) from {self.source_name} to "
                f"{self.dest_name} failed: {exc}") from exc
        staged = None
        if self.local is not None:
            gone = set(missing)
            staged = self.local.take(self.key, [p for p in region.pages if p not in gone])
        with self.table.lock:
            self.move.region_done(region, missing, staged)
        self._sent_bytes += (len(region.pages) - len(missing)) * PAGE_SIZE
        if self.max_rate:
            # Keep the average under the cap; an abort request ends the wait.
            ahead = self._sent_bytes / self.max_rate - (time.monotonic() - self._t0)
            if ahead > 0:
                self._abort.wait(ahead)

    def _send_invalidations(self, stale: list[int]) -> None:
        if not stale:
            return
        if self.local is not None:
            self.local.drop(self.key, stale)
            return
        assert self.dest_client is not None
        try:
            self.dest_client.drop_pages(self.key, stale)
        except FabricError as exc:
            raise TransferFailed(f"invalidation at {self.dest_name} failed: {exc}") from exc

    def _cleanup_after_switch(self) -> None:
        """The destination owns the part: empty the source, drop what is left staged."""
        try:
            self.source_client.drop_vm(self.vm)
        except FabricError as exc:
            LOG.warning("emptying %s of %s after the move failed: %s (its copies are "
                        "orphans, never read)", self.source_name, self.vm, exc)
        self._drop_staging()

    def _drop_staging(self) -> None:
        if self.local is not None:
            self.local.drop_all(self.key)
            return
        assert self.dest_client is not None
        try:
            self.dest_client.drop_vm(self.key)
        except FabricError as exc:
            LOG.info("dropping staged copies at %s: %s", self.dest_name, exc)

    def _roll_back(self) -> None:
        with self.table.lock:
            if self.move.phase is Phase.SWITCHED:
                return
            self.move.abort()
        self._drop_staging()


def wait_all(transfers: Sequence[PartTransfer], timeout: float | None = None) -> bool:
    deadline = None if timeout is None else time.monotonic() + timeout
    for tr in transfers:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not tr.join(left):
            return False
    return True
