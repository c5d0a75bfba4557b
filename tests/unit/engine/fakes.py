"""A fake AgentAPI (a world of hosts, split VMs and agent operations) and an engine
built on a real SQLite file, for the engine's unit tests."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg
from oslo_messaging.notify import _impl_test
from oslo_messaging.rpc.dispatcher import ExpectedException

from nova_ipmigrate import exception, rpc
from nova_ipmigrate.conf import engine as engine_conf
from nova_ipmigrate.conf import paths
from nova_ipmigrate.engine.db import Database
from nova_ipmigrate.engine.inventory import Inventory
from nova_ipmigrate.engine.manager import EngineManager
from nova_ipmigrate.engine.notifications import Notifications
from nova_ipmigrate.engine.worker import Worker


class Direct:
    """An RPC endpoint called as the dispatcher would, but raising the endpoint's own
    exceptions (the dispatcher unwraps ``ExpectedException`` the same way)."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.endpoint, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except ExpectedException as exc:
                raise exc.exc_info[1] from None
        return call


#: methods that change something on an agent
MUTATING = ("split", "partial_migrate", "reintegrate", "op_abort", "main_migrate",
            "incoming_prepare", "incoming_commit", "incoming_abort")


class FakeAgents:
    """Agents of ``hosts`` (name -> sub-host store capacity in pages).

    An agent operation advances by ``step_pages`` per ``op_status`` and ends
    ``done`` when every page moved (unless ``hold`` is set); ending it moves the
    part in the VM's layout, as the data plane does.
    """

    def __init__(self, hosts: dict[str, int], step_pages: int = 50) -> None:
        self.capacity = dict(hosts)
        self.used = dict.fromkeys(hosts, 0)
        self.vms: dict[str, dict[str, Any]] = {}           # vm -> entry
        self.agent_ops: dict[str, dict[str, dict[str, Any]]] = {h: {} for h in hosts}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.down: set[str] = set()
        self.step_pages = step_pages
        self.hold = False
        #: an aborted agent op keeps running (its abort takes long)
        self.hold_abort = False
        self.refuse: dict[str, exception.IPMigrateException] = {}
        #: incoming main-host moves by (host, vm): "prepared" | "busy" (its QEMU goes)
        self.incoming: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- the world ------------------------------------------------------------------

    def add_vm(self, vm: str, main: str, pages_by_host: dict[str, int],
               path: str | None = None) -> None:
        self.vms[vm] = {"path": path or f"/memfs/{vm}", "vm": vm, "main_host": main,
                        "holders": [h for h in pages_by_host if h != main],
                        "pages_by_host": dict(pages_by_host), "broken": False}
        for h, n in pages_by_host.items():
            if h != main:
                self.used[h] += n

    def layout(self, vm: str) -> dict[str, int]:
        return dict(self.vms[vm]["pages_by_host"])

    def mutating_calls(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [c for c in self.calls if c[0] in MUTATING]

    def restart(self, host: str) -> None:
        """The agent restarts: it forgets its operations (the running ones rolled back)."""
        with self._lock:
            self.agent_ops[host] = {}

    def finish(self, host: str, op_id: str, state: str = "done", fault: str | None = None
               ) -> None:
        with self._lock:
            self._end(self.agent_ops[host][op_id], state, fault)

    def _enter(self, method: str, host: str, **kwargs: Any) -> None:
        self.calls.append((method, host, kwargs))
        if host in self.down:
            raise messaging.MessagingTimeout(f"{host} does not answer")
        if method in self.refuse:
            raise self.refuse[method]

    def _end(self, op: dict[str, Any], state: str, fault: str | None = None) -> None:
        if op["state"] != "running":
            return
        op["state"] = state
        op["fault"] = fault
        if state == "done":
            op["progress"]["pages_done"] = op["progress"]["pages_total"]
            op["progress"]["bytes_done"] = op["progress"]["bytes_total"]
            entry = self.vms[op["vm"]]
            pages = entry["pages_by_host"]
            for src in op["sources"]:
                n = pages.pop(src, 0)
                if src != entry["main_host"]:
                    self.used[src] -= n
                pages[op["dest"]] = pages.get(op["dest"], 0) + n
                if op["dest"] != entry["main_host"]:
                    self.used[op["dest"]] += n
            entry["holders"] = [h for h in pages if h != entry["main_host"]]

    def _new_op(self, host: str, kind: str, vm: str, sources: list[str], dest: str,
                request_id: str | None, **extra: Any) -> dict[str, Any]:
        for op in self.agent_ops[host].values():
            if request_id is not None and op["request_id"] == request_id:
                return op
        pages = sum(self.vms[vm]["pages_by_host"].get(s, 0) for s in sources)
        op = {"id": f"{host}-{next(self._ids)}", "request_id": request_id, "kind": kind,
              "vm": vm, "path": self.vms[vm]["path"], "state": "running", "fault": None,
              "sources": sources, "dest": dest, "parts": [],
              "progress": {"pages_total": pages, "pages_done": 0,
                           "bytes_total": pages * 4096, "bytes_done": 0, "resent": 0,
                           "invalidated": 0, "rate_bytes_s": 0, "eta_s": 0.0}, **extra}
        self.agent_ops[host][op["id"]] = op
        return op

    def _vm_at(self, host: str, path: str) -> str:
        for vm, e in self.vms.items():
            if e["main_host"] == host and e["path"] == path:
                return vm
        raise exception.NotFound(f"no split VM {path} on {host}", reason=path)

    @staticmethod
    def _view(op: dict[str, Any]) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in op.items()}

    # -- AgentAPI -------------------------------------------------------------------

    def parts(self, ctxt: Any, host: str) -> dict[str, Any]:
        with self._lock:
            self._enter("parts", host)
            return {"vms": [dict(e, pages_by_host=dict(e["pages_by_host"]))
                            for e in self.vms.values() if e["main_host"] == host]}

    def agent_stats(self, ctxt: Any, host: str) -> dict[str, Any]:
        with self._lock:
            self._enter("agent_stats", host)
            vms = {vm: e["pages_by_host"].get(host, 0) for vm, e in self.vms.items()
                   if e["main_host"] != host and e["pages_by_host"].get(host)}
            return {"substore": {"capacity_pages": self.capacity[host],
                                 "used_pages": self.used[host], "vms": vms}}

    def endpoint(self, ctxt: Any, host: str) -> dict[str, Any]:
        with self._lock:
            self._enter("endpoint", host)
            return {"name": host, "address": "127.0.0.1",
                    "port": 47800 + list(self.capacity).index(host)}

    def split(self, ctxt: Any, host: str, path: str, resident_limit: int,
              sub_hosts: list[dict[str, Any]], vm: str | None = None) -> dict[str, Any]:
        assert vm is not None
        with self._lock:
            self._enter("split", host, path=path, vm=vm, sub_hosts=sub_hosts,
                        resident_limit=resident_limit)
            self.add_vm(vm, host, {host: 100}, path=path)
            self.vms[vm]["holders"] = [s["name"] for s in sub_hosts]
            return {"path": path, "vm": vm, "sub_hosts": [s["name"] for s in sub_hosts]}

    def partial_migrate(self, ctxt: Any, host: str, path: str, source: str,
                        dest: dict[str, Any], strategy: str = "ipmigrate",
                        max_rate_mb_s: float | None = None,
                        request_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._enter("partial_migrate", host, path=path, source=source, dest=dest,
                        strategy=strategy, max_rate_mb_s=max_rate_mb_s,
                        request_id=request_id)
            vm = self._vm_at(host, path)
            return self._view(self._new_op(host, "partial_migration", vm, [source],
                                           dest["name"], request_id))

    def reintegrate(self, ctxt: Any, host: str, path: str, strategy: str = "ipmigrate",
                    request_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._enter("reintegrate", host, path=path, strategy=strategy,
                        request_id=request_id)
            vm = self._vm_at(host, path)
            sources = [h for h in self.vms[vm]["pages_by_host"] if h != host]
            return self._view(self._new_op(host, "reintegration", vm, sources, host,
                                           request_id))

    def op_status(self, ctxt: Any, host: str, op_id: str, wait: float = 0) -> dict[str, Any]:
        with self._lock:
            self._enter("op_status", host, op_id=op_id)
            op = self.agent_ops[host].get(op_id)
            if op is None:
                raise exception.NotFound(f"no operation {op_id!r} on {host}", reason=op_id)
            pr = op["progress"]
            if op["state"] == "running" and not self.hold:
                pr["pages_done"] = min(pr["pages_total"], pr["pages_done"] + self.step_pages)
                pr["bytes_done"] = pr["pages_done"] * 4096
                if op.get("aborting") and not self.hold_abort:
                    self._end(op, "aborted", "aborted by request")
                elif pr["pages_done"] >= pr["pages_total"]:
                    self._end(op, "done")
            elif op["state"] == "running" and op.get("aborting") and not self.hold_abort:
                self._end(op, "aborted", "aborted by request")
            return self._view(op)

    def ops(self, ctxt: Any, host: str) -> dict[str, Any]:
        with self._lock:
            self._enter("ops", host)
            return {"ops": [self._view(o) for o in self.agent_ops[host].values()]}

    def stats(self, ctxt: Any, host: str) -> dict[str, Any]:
        with self._lock:
            self._enter("stats", host)
            files = {e["path"]: {"size": 1 << 30, "resident_limit_pages": 65536}
                     for e in self.vms.values() if e["main_host"] == host}
            return {"ok": True, "stats": {"files": files}}

    def incoming_prepare(self, ctxt: Any, host: str, vm: str, size: int,
                         resident_limit: int, source: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._enter("incoming_prepare", host, vm=vm, size=size, source=source["name"])
            self.incoming[(host, vm)] = "prepared"
            return {"ok": True}

    def main_migrate(self, ctxt: Any, host: str, path: str, dest: dict[str, Any],
                     request_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._enter("main_migrate", host, path=path, dest=dest["name"],
                        request_id=request_id)
            vm = self._vm_at(host, path)
            op = self._new_op(host, "main_host_migration", vm, [], dest["name"], request_id,
                              details={"phase": "migrating", "stopped_at": 100.0})
            op["progress"]["pages_total"] = 1   # ends on its next op_status
            return self._view(op)

    def incoming_commit(self, ctxt: Any, host: str, vm: str, then: str = "pull",
                        request_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._enter("incoming_commit", host, vm=vm, then=then, request_id=request_id)
            if self.incoming.pop((host, vm), None) is None:
                raise exception.NotFound(f"no main-host move of {vm} to {host}", reason=vm)
            entry = self.vms[vm]
            old = entry["main_host"]
            entry["main_host"] = host
            self.used[old] += entry["pages_by_host"].get(old, 0)   # a holder now
            entry["holders"] = [h for h in entry["pages_by_host"] if h != host]
            sources = [old] if then == "pull" else list(entry["holders"])
            op = self._new_op(host, "partial_migration" if then == "pull" else
                              "reintegration", vm, sources, host, request_id)
            return {"ok": True, "resumed_at": 100.0125, "directory_ms": 3.5,
                    "op": self._view(op)}

    def incoming_abort(self, ctxt: Any, host: str, vm: str) -> dict[str, Any]:
        with self._lock:
            self._enter("incoming_abort", host, vm=vm)
            if self.incoming.get((host, vm)) == "busy":
                raise exception.Conflict(f"the incoming QEMU of {vm} still runs", reason=vm)
            return {"ok": True, "removed": self.incoming.pop((host, vm), None) is not None}

    def op_abort(self, ctxt: Any, host: str, op_id: str) -> dict[str, Any]:
        with self._lock:
            self._enter("op_abort", host, op_id=op_id)
            op = self.agent_ops[host].get(op_id)
            if op is None:
                raise exception.NotFound(f"no operation {op_id!r} on {host}", reason=op_id)
            if op["state"] != "running":
                raise exception.Conflict(f"operation {op_id} is {op['state']}",
                                         reason=op_id)
            op["aborting"] = True
            return self._view(op)


def make_conf(**engine: Any) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    paths.register_opts(conf)
    engine_conf.register_opts(conf)
    conf([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    defaults = {"hosts": ["h1", "h2", "h3", "h4"], "poll_interval": 0.02,
                "progress_interval": 0.0, "host": "eng1"}
    for k, v in {**defaults, **engine}.items():
        conf.set_override(k, v, group="engine")
    return conf


def make_notifier() -> messaging.Notifier:
    conf = cfg.ConfigOpts()
    rpc.register_opts(conf)
    conf([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    transport = rpc.get_notification_transport(conf, url="fake://")
    _impl_test.reset()
    return messaging.Notifier(transport, driver="test", topics=["notifications"])


def notifications() -> list[tuple[str, str, dict[str, Any], str]]:
    """(event_type, priority, payload, publisher_id) of every notification sent."""
    return [(m["event_type"], prio, m["payload"], m["publisher_id"])
            for _ctxt, m, prio, _retry in _impl_test.NOTIFICATIONS]


class Engine:
    """An engine's objects (no threads, no RPC server) on the database in ``db_path``."""

    def __init__(self, db_path: Path, agents: Any, notifier: Any = None,
                 max_ops_per_host: int = 2, max_ops_per_link: int = 1,
                 hosts: tuple[str, ...] = ("h1", "h2", "h3", "h4"),
                 progress_interval: float = 0.0) -> None:
        self.db = Database(f"sqlite:///{db_path}")
        self.db.sync()
        self.agents = agents
        self.inventory = Inventory(agents, hosts, {})
        self.notifications = Notifications(notifier, "eng1", progress_interval)
        self.worker = Worker(self.db, agents, self.inventory, self.notifications,
                             max_ops_per_host=max_ops_per_host,
                             max_ops_per_link=max_ops_per_link, poll_interval=0.01)
        self.manager = Direct(EngineManager(self.db, self.inventory, self.notifications))

    def run(self, op_id: str, ticks: int = 100) -> dict[str, Any]:
        """Tick until the operation ends; its final dict."""
        for _ in range(ticks):
            self.worker.tick()
            op = self.db.get(op_id)
            assert op is not None
            if op.final:
                return op.to_dict()
        raise AssertionError(f"operation {op_id} did not end: {self.db.get(op_id)}")

    def state(self, op_id: str) -> str:
        op = self.db.get(op_id)
        assert op is not None
        return op.state

    def close(self) -> None:
        self.db.close()
