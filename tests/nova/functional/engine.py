"""An ipmigrate engine in the test process, on Nova's fixtures: its Nova backend
speaks to Nova's in-process scheduler (RPC on the fake transport) and placement
fixture; its agents are a fake data plane (the real one is covered by the lab
integration tests)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from nova_ipmigrate.accounting import reconcile
from nova_ipmigrate.accounting.backend import NovaBackend
from nova_ipmigrate.engine.db import Database
from nova_ipmigrate.engine.inventory import Inventory
from nova_ipmigrate.engine.manager import EngineManager
from nova_ipmigrate.engine.notifications import Notifications
from nova_ipmigrate.engine.worker import Worker
from tests.unit.engine.fakes import Direct, FakeAgents

PAGE = 4096
MIB = 1 << 20


class DataPlane(FakeAgents):
    """The fake agents, with a split that spreads the VM's pages as the real one
    does: the resident limit stays on the main host, the rest goes evenly to the
    sub-hosts."""

    def __init__(self, hosts: list[str], vm_mb: int) -> None:
        super().__init__({h: 1 << 22 for h in hosts}, step_pages=1 << 20)
        self.vm_mb = vm_mb

    def split(self, ctxt: Any, host: str, path: str, resident_limit: int,
              sub_hosts: list[dict[str, Any]], vm: str | None = None) -> dict[str, Any]:
        assert vm is not None
        with self._lock:
            self._enter("split", host, path=path, vm=vm, sub_hosts=sub_hosts,
                        resident_limit=resident_limit)
            total = self.vm_mb * MIB // PAGE
            resident = resident_limit // PAGE
            subs = [s["name"] for s in sub_hosts]
            base, extra = divmod(total - resident, len(subs))
            pages = {host: resident}
            for i, s in enumerate(subs):
                pages[s] = base + (1 if i < extra else 0)
            self.add_vm(vm, host, pages, path=path)
            return {"path": path, "vm": vm, "sub_hosts": subs}

    # the old main host's side of a main-host move that Nova's driver runs
    def main_prepare_source(self, ctxt: Any, host: str, vm: str, dest: dict[str, Any],
                            path: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._enter("main_prepare_source", host, vm=vm, dest=dest["name"])
            entry = self.vms[vm]
            assert entry["main_host"] == host, (entry, host)
            return {"ok": True, "vm": vm, "path": entry["path"], "domain": "instance"}

    def main_finish_source(self, ctxt: Any, host: str, vm: str, ok: bool
                           ) -> dict[str, Any]:
        with self._lock:
            self._enter("main_finish_source", host, vm=vm, ok=ok)
            return {"ok": True}


class InProcessEngine:
    """The engine's objects (no threads): ``run`` ticks the worker until the
    operation ends."""

    def __init__(self, workdir: Path, agents: DataPlane, hosts: list[str]) -> None:
        self.db = Database(f"sqlite:///{workdir / 'engine.sqlite'}")
        self.db.sync()
        self.agents = agents
        self.backend = NovaBackend.from_nova()
        self.inventory = Inventory(agents, hosts, {})
        self.notifications = Notifications(None, "engine-test", 0.0)
        self.worker = Worker(self.db, agents, self.inventory, self.notifications,
                             poll_interval=0.01, backend=self.backend)
        self.manager = Direct(EngineManager(
            self.db, self.inventory, self.notifications, backend=self.backend,
            reconciler=self.reconcile))
        self._ids = itertools.count()

    def reconcile(self) -> list[dict[str, Any]]:
        entries, _ = self.inventory.entries()
        return reconcile.reconcile(self.backend.ctxt(), entries, self.inventory.hosts,
                                   self.backend.ledger, self.backend.providers)

    def run(self, op_id: str, ticks: int = 400) -> dict[str, Any]:
        for _ in range(ticks):
            self.worker.tick()
            op = self.db.get(op_id)
            assert op is not None
            if op.final and all(c.final for c in self.db.list(parent_id=op_id)):
                return op.to_dict()
        raise AssertionError(f"operation {op_id} did not end: {self.db.get(op_id)}")

    def close(self) -> None:
        self.db.close()
