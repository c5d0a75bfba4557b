"""The engine's RPC endpoint (topic ``ipmigrate-engine``, API version 1.3).

Every request is validated up front against what the agents report; a request
that is refused raises one of :mod:`nova_ipmigrate.exception` (unknown VM:
``NotFound``; a host not holding a part, a destination equal to the source,
malformed arguments: ``Invalid``; a destination without room:
``InsufficientCapacity``; an operation already active on the VM: ``Conflict``;
an agent that does not answer: ``Unavailable``) and changes nothing. An
accepted request is persisted ``queued`` and returned; the worker runs it.

API versions:

* 1.0: partial_migration, reintegration, split, host_drain, list_operations,
  show_operation, abort_operation
* 1.1: show_vm (a split VM's memory layout: pages per host)
* 1.2: main_host_migration (the main host's vCPUs, devices and resident pages to
  another host, through libvirt); reintegration onto a host other than the main
  host (a main-host move to it, then every part comes to it)
* 1.3: split with no ``sub_hosts`` and no ``resident_limit`` where the engine's
  backend schedules (``[engine] backend = nova``: the flavor says how, Nova's
  scheduler says where); reconcile (the agents' truth against the backend's books)

With a backend that schedules, destinations come from it (Nova's scheduler) and
its claims are made here, before the operation exists: a claim that fails
refuses the request and changes nothing.

Strategies are the plugins of ``nova_ipmigrate.transfer_strategy`` installed
where the engine runs (the main host's agent loads the same name; one it lacks
refuses the start, and the operation ends ``failed`` with its reason).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import oslo_messaging as messaging

from nova_ipmigrate import exception
from nova_ipmigrate.engine.backend import RECORD, Backend
from nova_ipmigrate.engine.db import Database, StaleOperation
from nova_ipmigrate.engine.inventory import Inventory
from nova_ipmigrate.engine.models import ACTIVE_STATES, KINDS, STATES, Operation, utcnow
from nova_ipmigrate.engine.notifications import Notifications
from nova_ipmigrate.engine.worker import reserved_pages
from nova_ipmigrate.migration import strategy as strategies
from nova_ipmigrate.remotable import remotable

RPC_API_VERSION = "1.3"
_STRATEGY_NAMES: list[str] = []


def _invalid(reason: str) -> exception.Invalid:
    return exception.Invalid(reason, reason=reason)


def _str(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"{name} must be a non-empty string, not {value!r}")


def strategy_names() -> list[str]:
    """The transfer strategies installed (loaded once)."""
    if not _STRATEGY_NAMES:
        _STRATEGY_NAMES.extend(sorted(strategies.manager().names()))
    return _STRATEGY_NAMES


def _strategy(value: Any) -> None:
    names = strategy_names()
    if not isinstance(value, str) or value not in names:
        raise _invalid(f"unknown strategy {value!r} (one of {', '.join(names)})")


def _host_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _invalid(f"{name} must be a list of host names, not {value!r}")
    for h in value:
        _str(f"an entry of {name}", h)
    if len(set(value)) != len(value):
        raise _invalid(f"{name} names a host twice: {list(value)}")
    return [str(h) for h in value]


class EngineManager:
    target = messaging.Target(version=RPC_API_VERSION)

    def __init__(self, db: Database, inventory: Inventory,
                 notifications: Notifications | None = None, wake: Any = None,
                 backend: Backend | None = None,
                 reconciler: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.db = db
        self.inventory = inventory
        self.backend = backend or Backend()
        self._reconciler = reconciler
        self.notify = notifications
        self._wake = wake or (lambda: None)
        #: validation and creation of one request at a time (conflict checks)
        self._lock = threading.Lock()

    # -- helpers --------------------------------------------------------------------

    def _conflict(self, vm: str) -> None:
        active = self.db.list(vm=vm, states=ACTIVE_STATES)
        if active:
            op = active[0]
            raise exception.Conflict(
                f"VM {vm} has an active {op.kind} operation {op.id} ({op.state})",
                reason=f"operation {op.id}", operation=op.id)

    def _create(self, **values: Any) -> dict[str, Any]:
        op = self.db.create(**values)
        self._wake()
        return op.to_dict()

    def _create_claimed(self, record: dict[str, Any] | None,
                        build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Create the operation ``build`` describes; a failure gives the backend's
        claims back (the request then changed nothing)."""
        try:
            values = build()
            if record is not None:
                values["params"] = {**values.get("params", {}), RECORD: record}
            return self._create(**values)
        except Exception:
            self.backend.release(record)
            raise

    def _get(self, op_id: Any) -> Operation:
        _str("op_id", op_id)
        op = self.db.get(op_id)
        if op is None:
            raise exception.NotFound(f"no operation {op_id}", reason=f"operation {op_id}")
        return op

    # -- operations -----------------------------------------------------------------

    @remotable()
    def partial_migration(self, context: Any, vm: str, source_host: str,
                          dest_host: str | None = None, strategy: str = "ipmigrate",
                          max_rate_mb_s: float | None = None) -> dict[str, Any]:
        _str("vm", vm)
        _str("source_host", source_host)
        _str("dest_host", dest_host, optional=True)
        _strategy(strategy)
        if max_rate_mb_s is not None and (isinstance(max_rate_mb_s, bool) or not isinstance(
                max_rate_mb_s, (int, float)) or max_rate_mb_s <= 0):
            raise _invalid(f"max_rate_mb_s must be a positive number, not {max_rate_mb_s!r}")
        inv = self.inventory
        inv.known(source_host, "source host")
        if dest_host is not None:
            inv.known(dest_host, "destination host")
            if dest_host == source_host:
                raise _invalid(f"the destination must differ from the source ({source_host})")
        with self._lock:
            self._conflict(vm)
            entry = inv.find_vm(vm)
            main = str(entry["main_host"])
            if entry.get("broken"):
                raise _invalid(f"VM {vm} is broken (lost pages): nothing can move")
            if source_host == main:
                raise _invalid(f"{source_host} is the main host of {vm}: a partial "
                               f"migration moves a sub-host's part (the main-host move "
                               f"is another operation)")
            pages = int(dict(entry.get("pages_by_host") or {}).get(source_host, 0))
            if pages <= 0:
                holders = sorted(h for h, n in dict(entry["pages_by_host"]).items()
                                 if int(n) > 0 and h != main)
                raise _invalid(f"{source_host} holds no part of {vm} (sub-hosts holding "
                               f"parts: {', '.join(holders) or 'none'})")
            reserved = reserved_pages(self.db)
            if dest_host is not None and dest_host != main:
                free = inv.free_pages([dest_host], reserved)
                if dest_host not in free:
                    raise exception.Unavailable(f"the agent on {dest_host} does not answer",
                                                reason=dest_host)
                if free[dest_host] < pages:
                    raise exception.InsufficientCapacity(
                        f"{dest_host} has room for {free[dest_host]} pages, the part of "
                        f"{vm} on {source_host} has {pages}", reason=dest_host)
            op_id = str(uuid.uuid4())
            record = None
            if self.backend.schedules:
                holders = sorted(h for h, n in dict(entry["pages_by_host"]).items()
                                 if int(n) > 0 and h != main)
                record = self.backend.claim_part(op_id, vm, main, source_host, dest_host,
                                                 holders)
                dest_host = str(record["dest"])
            elif dest_host is None:
                dest_host = inv.choose_destination(entry, source_host, reserved)
            dest = dest_host

            def build() -> dict[str, Any]:
                return dict(
                    id=op_id, kind="partial_migration", vm=vm, path=str(entry["path"]),
                    main_host=main, source_host=source_host, dest_host=dest,
                    strategy=strategy,
                    params={"pages": pages, "max_rate_mb_s": max_rate_mb_s,
                            "dest_endpoint": inv.endpoint(dest)})
            return self._create_claimed(record, build)

    @remotable()
    def reintegration(self, context: Any, vm: str, target_host: str | None = None,
                      strategy: str = "ipmigrate") -> dict[str, Any]:
        _str("vm", vm)
        _str("target_host", target_host, optional=True)
        _strategy(strategy)
        if target_host is not None:
            self.inventory.known(target_host, "target host")
        with self._lock:
            self._conflict(vm)
            entry = self.inventory.find_vm(vm)
            main = str(entry["main_host"])
            if target_host is not None and target_host != main:
                return self._main_move(entry, target_host, "reintegrate")
            if entry.get("broken"):
                raise _invalid(f"VM {vm} is broken (lost pages): nothing can move")
            pages = {h: int(n) for h, n in dict(entry.get("pages_by_host") or {}).items()}
            sources = sorted(h for h, n in pages.items() if h != main and n > 0)
            if not sources:
                raise _invalid(f"every page of {vm} is on its main host {main} already")
            op_id = str(uuid.uuid4())
            record = (self.backend.claim_reintegration(op_id, vm, main, sources)
                      if self.backend.schedules else None)
            return self._create_claimed(record, lambda: dict(
                id=op_id, kind="reintegration", vm=vm, path=str(entry["path"]),
                main_host=main, dest_host=main, strategy=strategy,
                params={"sources": sources, "pages": sum(pages[h] for h in sources)}))

    @remotable()
    def main_host_migration(self, context: Any, vm: str, dest_host: str | None = None,
                            then: str = "pull") -> dict[str, Any]:
        _str("vm", vm)
        _str("dest_host", dest_host, optional=True)
        if then not in ("pull", "reintegrate"):
            raise _invalid(f"then must be 'pull' or 'reintegrate', not {then!r}")
        if dest_host is not None:
            self.inventory.known(dest_host, "destination host")
        with self._lock:
            self._conflict(vm)
            entry = self.inventory.find_vm(vm)
            return self._main_move(entry, dest_host, then)

    def _main_move(self, entry: dict[str, Any], dest: str | None,
                   then: str) -> dict[str, Any]:
        """Create a main-host move of ``entry``'s VM (lock held, no conflict)."""
        vm, main = str(entry["vm"]), str(entry["main_host"])
        self.backend.check_main_move(vm)
        if self.backend.moves_main_host:
            return self._backend_main_move(entry, dest, then)
        if entry.get("broken"):
            raise _invalid(f"VM {vm} is broken (lost pages): nothing can move")
        pages = {h: int(n) for h, n in dict(entry.get("pages_by_host") or {}).items()}
        holders = sorted(h for h, n in pages.items() if h != main and n > 0)
        if dest is None:
            cands = [h for h in self.inventory.hosts if h != main and h not in holders]
            free = self.inventory.free_pages(cands, reserved_pages(self.db))
            if not free:
                raise exception.InsufficientCapacity(
                    f"no host for the main-host move of {vm}: every other host holds a "
                    f"part of it or does not answer", reason="no candidate host")
            dest = max(sorted(free), key=lambda h: free[h])
        if dest == main:
            raise _invalid(f"{dest} is the main host of {vm} already")
        if dest in holders:
            raise _invalid(f"{dest} holds a part of {vm} ({pages[dest]} pages): move that "
                           f"part away first, or choose a host that holds none")
        return self._create(
            kind="main_host_migration", vm=vm, path=str(entry["path"]), main_host=main,
            source_host=main, dest_host=dest,
            params={"then": then, "sources": holders, "pages": pages.get(main, 0),
                    "dest_endpoint": self.inventory.endpoint(dest),
                    "source_endpoint": self.inventory.endpoint(main)})

    def _backend_main_move(self, entry: dict[str, Any], dest: str | None,
                           then: str) -> dict[str, Any]:
        """A main-host move the backend runs (Nova's live migration of the instance,
        the driver calling the agents), then the pull of the old main host's pages."""
        vm, main = str(entry["vm"]), str(entry["main_host"])
        if entry.get("broken"):
            raise _invalid(f"VM {vm} is broken (lost pages): nothing can move")
        if then != "pull":
            raise _invalid("a main-host move through Nova pulls the old main host's part "
                           "(then='pull'); reintegrate onto the new main host afterwards")
        pages = {h: int(n) for h, n in dict(entry.get("pages_by_host") or {}).items()}
        holders = sorted(h for h, n in pages.items() if h != main and n > 0)
        if dest == main:
            raise _invalid(f"{dest} is the main host of {vm} already")
        if dest in holders:
            raise _invalid(f"{dest} holds a part of {vm} ({pages[dest]} pages): move that "
                           f"part away first, or choose a host that holds none")
        op_id = str(uuid.uuid4())
        record = self.backend.claim_main_move(op_id, vm, main, dest, holders)
        chosen = str(record["dest"])
        if chosen == main or chosen in holders:
            raise _invalid(f"the backend chose {chosen} for the main-host move of {vm}")
        self.inventory.known(chosen, "destination host")
        return self._create_claimed(record, lambda: dict(
            id=op_id, kind="main_host_migration", vm=vm, path=str(entry["path"]),
            main_host=main, source_host=main, dest_host=chosen,
            params={"then": "pull", "sources": holders, "pages": pages.get(main, 0)}))

    @remotable()
    def split(self, context: Any, main_host: str, path: str, vm: str,
              sub_hosts: Sequence[str] = (), resident_limit: int | None = None
              ) -> dict[str, Any]:
        _str("main_host", main_host)
        _str("path", path)
        _str("vm", vm)
        hosts = _host_list("sub_hosts", list(sub_hosts) if isinstance(sub_hosts, tuple)
                           else sub_hosts)
        if not hosts and not self.backend.schedules:
            raise _invalid("a split needs at least one sub-host")
        if resident_limit is None and not self.backend.schedules:
            raise _invalid("a split needs resident_limit (bytes)")
        if resident_limit is not None and (
                isinstance(resident_limit, bool) or not isinstance(resident_limit, int)
                or resident_limit < 0):
            raise _invalid(f"resident_limit must be a non-negative integer (bytes), not "
                           f"{resident_limit!r}")
        inv = self.inventory
        inv.known(main_host, "main host")
        for h in hosts:
            inv.known(h, "sub-host")
        if main_host in hosts:
            raise _invalid(f"the main host {main_host} cannot be its own sub-host")
        with self._lock:
            self._conflict(vm)
            entries, _ = inv.entries()
            for e in entries:
                if str(e.get("vm")) == vm or (e.get("main_host") == main_host
                                              and e.get("path") == path):
                    raise exception.Conflict(
                        f"{e['vm']} ({e['main_host']}:{e['path']}) is split already",
                        reason=f"VM {vm}")
            op_id = str(uuid.uuid4())
            record = None
            if self.backend.schedules:
                record = self.backend.claim_split(op_id, vm, main_host, hosts,
                                                  resident_limit)
                hosts = [str(h) for h in record["sub_hosts"]]
                resident_limit = int(record["resident_limit"])
            chosen, limit = hosts, resident_limit
            return self._create_claimed(record, lambda: dict(
                id=op_id, kind="split", vm=vm, path=path, main_host=main_host,
                params={"sub_hosts": chosen,
                        "sub_host_endpoints": [inv.endpoint(h) for h in chosen],
                        "resident_limit": limit}))

    @remotable()
    def host_drain(self, context: Any, host: str,
                   exclude: Sequence[str] = ()) -> dict[str, Any]:
        _str("host", host)
        excluded = _host_list("exclude", list(exclude) if isinstance(exclude, tuple)
                              else exclude)
        self.inventory.known(host)
        for h in excluded:
            self.inventory.known(h, "excluded host")
        if host in excluded:
            raise _invalid(f"the drained host {host} cannot be excluded")
        with self._lock:
            for op in self.db.list(states=ACTIVE_STATES, kinds=("host_drain",)):
                if op.source_host == host:
                    raise exception.Conflict(f"{host} is being drained by operation {op.id}",
                                             reason=f"operation {op.id}", operation=op.id)
            return self._create(kind="host_drain", source_host=host,
                                params={"exclude": excluded})

    @remotable()
    def show_vm(self, context: Any, vm: str) -> dict[str, Any]:
        """Where a split VM's memory is: pages per host, as its main host reports."""
        _str("vm", vm)
        entry = self.inventory.find_vm(vm)
        pages = {str(h): int(n) for h, n in dict(entry.get("pages_by_host") or {}).items()}
        return {"vm": vm, "main_host": str(entry["main_host"]), "path": entry.get("path"),
                "pages_by_host": pages, "broken": bool(entry.get("broken")),
                "active_operations": [op.id for op in self.db.list(
                    vm=vm, states=ACTIVE_STATES)]}

    @remotable()
    def reconcile(self, context: Any) -> dict[str, Any]:
        """Compare where the agents say every split VM's memory is with the backend's
        books (placement, with the Nova backend); the drift found, one entry per
        mismatch (nothing is changed: an operator or a later operation fixes it)."""
        if self._reconciler is None:
            return {"backend": self.backend.name, "drift": [], "checked": False}
        return {"backend": self.backend.name, "drift": self._reconciler(), "checked": True}

    @remotable()
    def list_operations(self, context: Any, vm: str | None = None,
                        state: str | None = None) -> list[dict[str, Any]]:
        _str("vm", vm, optional=True)
        if state is not None and state not in STATES:
            raise _invalid(f"unknown state {state!r} (one of {', '.join(STATES)})")
        return [op.to_dict() for op in self.db.list(
            vm=vm, states=None if state is None else (state,))]

    @remotable()
    def show_operation(self, context: Any, op_id: str) -> dict[str, Any]:
        op = self._get(op_id)
        out = op.to_dict()
        if op.kind == "host_drain":
            out["children"] = [c.to_dict() for c in self.db.list(parent_id=op.id)]
        return out

    @remotable()
    def abort_operation(self, context: Any, op_id: str) -> dict[str, Any]:
        for _ in range(20):
            op = self._get(op_id)
            if op.final:
                raise exception.Conflict(f"operation {op_id} is {op.state}: nothing to abort",
                                         reason=f"operation {op_id}")
            if op.state == "aborting":
                return op.to_dict()
            if op.kind == "split" and op.state == "running":
                raise exception.Conflict(f"split {op_id} is running: it cannot be aborted",
                                         reason=f"operation {op_id}")
            try:
                if op.state == "queued":
                    if (op.params or {}).get(RECORD):
                        # its claims go back first (placement down: the abort is
                        # refused with Unavailable and the operation stays queued)
                        self.backend.settle(op, "aborted")
                    op = self.db.update(op, state="aborted", step="aborted",
                                        finished_at=utcnow(), fault="aborted while queued")
                    if self.notify is not None:
                        self.notify.emit(op, "abort")
                else:
                    op = self.db.update(op, state="aborting")
            except StaleOperation:
                continue
            self._wake()
            return op.to_dict()
        raise exception.Conflict(f"operation {op_id} keeps changing: try again",
                                 reason=f"operation {op_id}")


__all__ = ["EngineManager", "KINDS", "RPC_API_VERSION"]
