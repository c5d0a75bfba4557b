"""Operations on split VMs, as the main host's agent runs them: partial migration,
reintegration, and the naive baselines they are measured against.

An :class:`Operation` groups the part moves of one request (one for a partial
migration of a sub-host, one per sub-host for a reintegration, all running in
parallel) and reports their progress as one: bytes and pages done and total,
rate, re-sent and invalidated pages, ETA. :class:`Operations` is the agent's
registry of them (list, show, abort).

Strategies are plugins of the stevedore namespace
``nova_ipmigrate.transfer_strategy`` (``migration.strategy``); a request that
names none gets ``[migration] default_strategy``. The built-ins:

* ``ipmigrate`` (default): each part goes straight from its holder to the
  destination (``transfer.PartTransfer``), in parallel.
* ``naive``, for comparison only. Partial migration of a sub-host without
  IPmigrate: page the whole VM into the main host (every part, through the
  main host's page-in path), then split it again without the source.
  Reintegration by gathering: the main host pulls every part, one holder after
  the other, through its page-in path.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stevedore import extension

from nova_ipmigrate.fabric.errors import FabricError, PagesNotHeldError
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.ramfile import RamFile
from nova_ipmigrate.memfs.store import StoreFull
from nova_ipmigrate.migration import strategy as strategies
from nova_ipmigrate.migration.consistency import MAIN_HOST, Phase
from nova_ipmigrate.migration.transfer import Endpoint, LocalStaging, PartTransfer

LOG = logging.getLogger(__name__)

#: the built-in strategies (the plugins installed: ``Operations.strategy_names()``)
STRATEGIES = ("ipmigrate", "naive")
#: pages per page-in request of the naive gather (one fabric request at most)
GATHER_BATCH = 4096


class OpState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"


class OperationError(Exception):
    """A request for an operation that cannot be run (nothing was changed)."""

    def __init__(self, message: str, errno_: int = 22) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass
class Operation:
    id: str
    kind: str                 # partial_migration | reintegration
    vm: str
    path: str
    strategy: str
    source: str | None
    dest: str
    transfers: list[PartTransfer] = field(default_factory=list)
    state: OpState = OpState.RUNNING
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    #: the caller's id for this request (the engine's operation): a request
    #: repeated with the same id gets this operation back, nothing new starts
    request_id: str | None = None
    #: for naive strategies: their own progress (no PartTransfer)
    naive: dict[str, Any] = field(default_factory=dict)
    #: operations that are not part moves (main-host migration): their own steps
    details: dict[str, Any] = field(default_factory=dict)
    #: the plugin behind ``strategy``
    plan: strategies.TransferStrategy | None = field(default=None, repr=False,
                                                     compare=False)
    _abort: threading.Event = field(default_factory=threading.Event)
    _finished: threading.Event = field(default_factory=threading.Event)

    def abort(self) -> None:
        self._abort.set()
        for tr in self.transfers:
            tr.abort()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    @property
    def abort_requested(self) -> bool:
        return self._abort.is_set()

    def finish(self, state: OpState, error: str | None = None) -> None:
        """End an operation that has no part transfers (they end theirs themselves)."""
        self._finish(state, error)

    def _finish(self, state: OpState, error: str | None = None) -> None:
        self.state = state
        self.error = error
        self.ended_at = time.time()
        self._finished.set()

    def progress(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [tr.progress() for tr in self.transfers]
        keys = ("pages_total", "pages_done", "bytes_total", "bytes_done", "copied", "resent",
                "invalidated", "missing", "switched", "orphans", "page_ins_from_source",
                "page_outs_to_source")
        total: dict[str, Any] = {k: sum(int(p[k]) for p in parts) for k in keys}
        if self.naive:
            for k in keys:
                if k in self.naive:
                    total[k] = total.get(k, 0) + int(self.naive[k])
        end = self.ended_at or time.time()
        elapsed = max(1e-9, end - self.started_at)
        rate = total["bytes_done"] / elapsed
        left = max(0, total["bytes_total"] - total["bytes_done"])
        total.update(elapsed_s=round(elapsed, 3), rate_bytes_s=round(rate),
                     eta_s=round(left / rate, 1) if rate > 0 and left else 0.0)
        return {"id": self.id, "request_id": self.request_id, "kind": self.kind,
                "vm": self.vm, "path": self.path,
                "strategy": self.strategy, "source": self.source, "dest": self.dest,
                "state": self.state.value, "fault": self.error,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "progress": total, "parts": parts,
                **({"naive": dict(self.naive)} if self.naive else {}),
                **({"details": dict(self.details)} if self.details else {})}


class Operations:
    """The agent's operations on the split VMs whose main host it is."""

    def __init__(self, host_name: str, endpoint: Endpoint,
                 local_staging: LocalStaging, copy_timeout: float = 120.0,
                 regions_in_flight: int = 2,
                 default_strategy: str = strategies.DEFAULT,
                 extensions: extension.ExtensionManager | None = None) -> None:
        self.host_name = host_name
        self.endpoint = endpoint
        self.local = local_staging
        self.copy_timeout = copy_timeout
        self.regions_in_flight = regions_in_flight
        self.default_strategy = default_strategy
        #: the installed strategies (loaded on first use)
        self._extensions = extensions
        self._ops: dict[str, Operation] = {}
        self._busy: dict[str, str] = {}   # RAM file path -> running operation id
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- registry -------------------------------------------------------------------------

    def get(self, op_id: str) -> Operation:
        op = self._ops.get(op_id)
        if op is None:
            raise OperationError(f"no operation {op_id!r} on {self.host_name}", 2)
        return op

    def all(self) -> list[dict[str, Any]]:
        return [op.progress() for op in self._ops.values()]

    def abort(self, op_id: str) -> dict[str, Any]:
        op = self.get(op_id)
        if op.state is not OpState.RUNNING:
            raise OperationError(f"operation {op_id} is {op.state.value}: nothing to abort",
                                 16)
        op.abort()
        return op.progress()

    def by_request(self, request_id: str | None) -> Operation | None:
        """The operation started for ``request_id`` (a repeated request), if any."""
        if request_id is None:
            return None
        for op in self._ops.values():
            if op.request_id == request_id:
                return op
        return None

    def strategy(self, name: str | None = None) -> strategies.TransferStrategy:
        """The strategy plugin ``name`` (None: ``default_strategy``)."""
        if self._extensions is None:
            self._extensions = strategies.manager()
        try:
            return strategies.load(name or self.default_strategy, self._extensions)
        except (strategies.UnknownStrategy, TypeError) as exc:
            raise OperationError(str(exc)) from exc

    def new_operation(self, kind: str, ram: RamFile, path: str, source: str | None,
                      dest: str, request_id: str | None = None) -> Operation:
        """Register an operation another module runs (it calls :meth:`release`)."""
        return self._new(kind, ram, path, None, source, dest, request_id)

    def release(self, op: Operation) -> None:
        """``op`` ended: its RAM file may take another operation."""
        self._release(op)

    def _new(self, kind: str, ram: RamFile, path: str, strategy: str | None,
             source: str | None, dest: str, request_id: str | None = None) -> Operation:
        plan = self.strategy(strategy)
        strategy = strategy or self.default_strategy
        with self._lock:
            running = self._busy.get(path)
            if running is not None:
                raise OperationError(f"{path} is busy with operation {running}", 16)
            op = Operation(f"{self.host_name}-{next(self._ids)}", kind, str(ram.vm), path,
                           strategy, source, dest, request_id=request_id, plan=plan)
            self._ops[op.id] = op
            self._busy[path] = op.id
        return op

    def _release(self, op: Operation) -> None:
        with self._lock:
            if self._busy.get(op.path) == op.id:
                del self._busy[op.path]

    # -- partial migration of a sub-host ----------------------------------------------------

    def partial_migration(self, path: str, ram: RamFile, source: str, dest: Endpoint,
                          strategy: str | None = None,
                          max_rate: float | None = None,
                          request_id: str | None = None) -> Operation:
        """Move the part ``source`` holds of the VM in ``ram`` to ``dest``.

        ``max_rate``: bandwidth cap of the copy in bytes/s (None: as fast as it goes).
        """
        again = self.by_request(request_id)
        if again is not None:
            return again
        if max_rate is not None and max_rate <= 0:
            raise OperationError("the bandwidth cap must be positive")
        backend, _table, _vm = _split_vm(path, ram)
        src = backend.holder_of_host(source)
        if not src:
            raise OperationError(f"{source} holds no part of {path} (holders: "
                                 f"{', '.join(backend.active_holders().values())})", 2)
        if dest.name == source:
            raise OperationError("the destination must differ from the source")
        op = self._new("partial_migration", ram, path, strategy, source, dest.name,
                       request_id)
        try:
            if op.plan is not None and not op.plan.direct:
                self._start_naive(op, ram, lambda: self._naive_partial(op, ram, src, dest))
                return op
            if dest.name == self.host_name:
                tr = self._transfer(op, ram, src, MAIN_HOST, self.endpoint, None)
            else:
                from nova_ipmigrate.agent.remote import SubHost
                new_holder = not backend.holder_of_host(dest.name)
                dst = backend.add_sub_host(SubHost(dest.name, dest.address, dest.port))
                if new_holder:
                    # A new destination takes no page-outs before it owns the part:
                    # its link is the copy's, and an abort leaves nothing there.
                    with ram.table.lock:  # type: ignore[union-attr]
                        ram.table.closed_holders.add(dst)  # type: ignore[union-attr]
                try:
                    dest_client = backend.client(dst)
                except Exception:
                    if new_holder:
                        backend.retire(dst)
                    raise
                tr = self._transfer(op, ram, src, dst, dest, dest_client)
                tr.new_holder = new_holder
            tr.max_rate = max_rate
        except Exception:
            self._release(op)
            del self._ops[op.id]
            raise
        op.transfers.append(tr)
        tr.start()
        return op

    # -- reintegration ----------------------------------------------------------------------

    def reintegration(self, path: str, ram: RamFile, strategy: str | None = None,
                      request_id: str | None = None) -> Operation:
        """Every holder sends its part to the main host, all in parallel.

        Paging out stops first (every page of the VM stays on this host from
        now on); the local store must have room for every remote page.
        """
        again = self.by_request(request_id)
        if again is not None:
            return again
        backend, table, _vm = _split_vm(path, ram)
        holders = backend.active_holders()
        if not holders:
            raise OperationError(f"no sub-host holds a part of {path}: nothing to "
                                 f"reintegrate")
        counts = table.holders()
        remote = sum(n for h, n in counts.items() if h in holders)
        if remote > table.store.free:
            raise OperationError(
                f"the local page store has {table.store.free} free slots, {remote} pages "
                f"are on sub-hosts: raise [memfs] page_store_mb", 28)
        op = self._new("reintegration", ram, path, strategy, None, self.host_name, request_id)
        with table.lock:
            was_pushing, was_closed = table.push_enabled, set(table.closed_holders)
        try:
            with table.lock:
                table.push_enabled = False
                table.closed_holders.update(holders)
            if op.plan is not None and not op.plan.direct:
                self._start_naive(op, ram, lambda: self._gather(op, ram, list(holders)))
                return op
            for h in holders:
                op.transfers.append(self._transfer(op, ram, h, MAIN_HOST, self.endpoint, None))
        except Exception:
            with table.lock:
                table.push_enabled = was_pushing
                table.closed_holders.clear()
                table.closed_holders.update(was_closed)
            self._release(op)
            del self._ops[op.id]
            raise
        for tr in op.transfers:
            tr.start()
        return op

    # -- the drivers ----------------------------------------------------------------------

    def _transfer(self, op: Operation, ram: RamFile, src: int, dst: int, ep: Endpoint,
                  dest_client: Any) -> PartTransfer:
        backend, table, vm = _split_vm(op.path, ram)
        return PartTransfer(table, vm, src, dst, ep, backend.client(src), dest_client,
                            local=self.local if dst == MAIN_HOST else None,
                            copy_timeout=self.copy_timeout,
                            on_done=lambda tr: self._part_done(op, ram, tr),
                            source_name=backend.holder_name(src),
                            dest_name=ep.name,
                            depth=op.plan.regions_in_flight(self.regions_in_flight)
                            if op.plan is not None else self.regions_in_flight)

    def _part_done(self, op: Operation, ram: RamFile, tr: PartTransfer) -> None:
        backend = ram.remote
        table = ram.table
        if backend is not None and table is not None:
            dst = tr.move.dest
            if tr.phase is Phase.SWITCHED:
                backend.retire(tr.move.source)  # type: ignore[attr-defined]
                if dst != MAIN_HOST and op.kind == "partial_migration":
                    with table.lock:
                        table.closed_holders.discard(dst)
            elif tr.new_holder:
                backend.retire(dst)  # type: ignore[attr-defined]
        if not all(t.finished.is_set() for t in op.transfers):
            return
        failed = [t for t in op.transfers if t.phase is not Phase.SWITCHED]
        if not failed:
            op._finish(OpState.DONE)
        elif op._abort.is_set():
            op._finish(OpState.ABORTED, "; ".join(t.error or "" for t in failed))
        else:
            op._finish(OpState.FAILED, "; ".join(f"{t.source_name}: {t.error}" for t in failed))
        self._release(op)
        LOG.info("operation %s %s: %s", op.id, op.state.value, op.progress()["progress"])

    def _start_naive(self, op: Operation, ram: RamFile, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                body()
            except _NaiveAborted:
                op._finish(OpState.ABORTED, "aborted by request")
            except Exception as exc:
                LOG.warning("operation %s failed: %s", op.id, exc)
                op._finish(OpState.FAILED, str(exc))
            else:
                op._finish(OpState.DONE)
            finally:
                self._release(op)
        threading.Thread(target=run, daemon=True, name=f"naive-{op.id}").start()

    def _gather(self, op: Operation, ram: RamFile, holders: list[int],
                retire: bool = True) -> None:
        """Naive reintegration: pull every part through the page-in path, one holder
        after the other."""
        backend, table, vm = _split_vm(op.path, ram)
        todo = {h: table.remote_pages(h) for h in holders}
        n = op.naive
        n.update(pages_total=sum(len(v) for v in todo.values()), pages_done=0, copied=0)
        n["bytes_total"] = n["pages_total"] * PAGE_SIZE
        n["bytes_done"] = 0
        for h, pages in todo.items():
            client = backend.client(h)
            batch = op.plan.gather_batch if op.plan is not None else GATHER_BATCH
            for i in range(0, len(pages), batch):
                if op._abort.is_set():
                    raise _NaiveAborted()
                chunk, data = _get_held(client, table, vm, h, pages[i:i + batch],
                                        backend.holder_name(h))
                if not chunk:
                    continue
                with table.lock:
                    for (p, stamp), d in zip(chunk, data, strict=True):
                        try:
                            table.bring_home(p, d, h, stamp)
                        except StoreFull as exc:
                            raise RuntimeError(str(exc)) from exc
                n["copied"] += len(chunk)
                n["pages_done"] += len(chunk)
                n["bytes_done"] = n["pages_done"] * PAGE_SIZE
            # Pages paged out to it before it was closed, and ones that were paged in
            # and out again while we pulled: one more pass each until it is empty.
            for _ in range(8):
                rest, data = _get_held(client, table, vm, h, table.remote_pages(h),
                                       backend.holder_name(h))
                if not rest:
                    break
                with table.lock:
                    for (p, stamp), d in zip(rest, data, strict=True):
                        table.bring_home(p, d, h, stamp)
            if retire and not table.remote_pages(h):
                backend.retire(h)

    def _naive_partial(self, op: Operation, ram: RamFile, src: int, dest: Endpoint) -> None:
        """Sub-host maintenance without IPmigrate: gather the whole VM into the main
        host, then split it again over the holders without the source."""
        backend, table, _vm = _split_vm(op.path, ram)
        from nova_ipmigrate.agent.remote import SubHost
        holders = list(backend.active_holders())
        with table.lock:
            table.push_enabled = False
            table.closed_holders.update(holders)
        self._gather(op, ram, holders, retire=False)
        if not table.remote_pages(src):
            backend.retire(src)
        gathered = int(op.naive["pages_done"])
        # Re-split: every page in the local store goes out again, the source excluded.
        keep = [h for h in holders if h != src]
        with table.lock:
            table.closed_holders.difference_update(keep)
        if dest.name != self.host_name:
            dst = backend.add_sub_host(SubHost(dest.name, dest.address, dest.port))
            with table.lock:
                table.closed_holders.discard(dst)
        with table.lock:
            table.push_enabled = True
        queued = table.queue_push_all()
        n = op.naive
        n["pages_total"] = gathered + queued
        n["bytes_total"] = n["pages_total"] * PAGE_SIZE
        while True:
            if op._abort.is_set():
                raise _NaiveAborted()
            stored = table.state_counts()["stored"]
            n["pages_done"] = gathered + max(0, queued - stored)
            n["bytes_done"] = n["pages_done"] * PAGE_SIZE
            if stored == 0:
                break
            time.sleep(0.02)


class _NaiveAborted(Exception):
    pass


#: attempts of a gather request whose pages the guest keeps paging in meanwhile
GATHER_ATTEMPTS = 32


def _get_held(client: Any, table: Any, vm: uuid.UUID, holder: int,
              chunk: list[tuple[int, int]], name: str
              ) -> tuple[list[tuple[int, int]], list[Any]]:
    """The content of the pages of ``chunk`` (page, stamp) the holder still holds.

    The guest pages in from the holder while the gather runs, and a page paged in
    is not held there any more: such pages are left out (the directory says they
    came home or moved) and the rest is asked for again."""
    for _ in range(GATHER_ATTEMPTS):
        if not chunk:
            return [], []
        try:
            return chunk, client.get_pages(vm, [p for p, _ in chunk])
        except PagesNotHeldError:
            now = dict(table.remote_pages(holder))
            chunk = [(p, s) for p, s in chunk if now.get(p) == s]
        except FabricError as exc:
            raise RuntimeError(f"gathering from {name}: {exc}") from exc
    raise RuntimeError(f"gathering from {name}: {len(chunk)} page(s) the directory places "
                       f"there are still not held after {GATHER_ATTEMPTS} attempts")


def _split_vm(path: str, ram: RamFile) -> tuple[Any, Any, uuid.UUID]:
    if ram.table is None or ram.remote is None or ram.vm is None:
        raise OperationError(f"{path} is not a split-memory instance (no sub-hosts)")
    if ram.lost_pages:
        raise OperationError(f"{path} is broken ({len(ram.lost_pages)} lost page(s)): "
                             f"nothing can move", 5)
    return ram.remote, ram.table, ram.vm
