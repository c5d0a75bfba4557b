"""The engine process's Nova side (``[engine] backend = nova``) on Nova's fixtures:
EngineService builds the Nova backend, listens to Nova's versioned notifications
on Nova's notification transport, reconciles periodically, and its manager runs
operations through Nova's scheduler and placement."""

from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

from nova_ipmigrate.accounting import service as nova_service
from nova_ipmigrate.engine.db import Database
from nova_ipmigrate.engine.service import EngineService
from tests.nova.functional.test_split_instances import HOSTS, SplitInstanceBase
from tests.unit.engine.fakes import make_conf


class TestEngineServiceWithNova(SplitInstanceBase):
    def test_service_runs_the_nova_side(self) -> None:
        server = self.boot()
        mem = self.split(server)
        conf = make_conf(hosts=HOSTS, backend="nova", reconcile_interval=1,
                         maintenance_reasons=["maintenance"])
        db = Database(f"sqlite:///{Path(self.tmp) / 'service.sqlite'}")
        db.sync()
        # Nova's configuration is the fixtures' here: not read again from files
        with mock.patch.object(nova_service, "init_nova") as init_nova:
            svc = EngineService(conf, None, self.agents, db=db)
        init_nova.assert_called_once_with(["/etc/nova/nova.conf"])
        self.assertIsNotNone(svc.nova)
        self.assertEqual("nova", svc.manager.backend.name)
        self.assertIs(svc.manager.backend, svc.worker.backend)
        reconciled: list[int] = []
        real = svc.nova.reconcile

        def counting() -> list[dict[str, object]]:
            out = real()
            reconciled.append(len(out))
            return out
        svc.nova.reconcile = counting
        svc.start()
        try:
            self.assertIsNotNone(svc.nova._listener)   # on Nova's notification transport
            deadline = time.monotonic() + 10
            while not reconciled and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual([0], reconciled[:1])      # the books agree
            # an operation through the service's manager and worker threads
            sub = sorted(h for h in mem if h != "host1")[0]
            op = svc.manager.partial_migration(svc.ctxt, vm=server["id"], source_host=sub)
            deadline = time.monotonic() + 30
            while not svc.db.get(op["id"]).final and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual("done", svc.db.get(op["id"]).state)
            self.assertNotIn(sub, self.memory(server))
            # a maintenance notification, as Nova's listener delivers it
            svc.nova.endpoint.info({}, "nova-compute:x", "service.update", {
                "nova_object.data": {"host": op["dest_host"], "binary": "nova-compute",
                                     "disabled": True,
                                     "disabled_reason": "maintenance"}}, {})
            drains = svc.db.list(kinds=("host_drain",))
            self.assertEqual([op["dest_host"]], [d.source_host for d in drains])
        finally:
            svc.stop()
        self.assertIsNone(svc.nova._listener)
