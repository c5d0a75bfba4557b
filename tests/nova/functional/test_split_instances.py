"""Split-memory instances through Nova: boot, split, partial migration of sub-host
parts, reintegration, host drain triggered by disabling a compute service, and
placement's allocations checked exactly after every step.

Nova's API, conductor, scheduler (with SplitMemoryFilter and SplitMemoryWeigher),
four nova-compute services running IPMigrateLibvirtDriver against fake libvirt
and the placement fixture are Nova's own; the engine runs in-process with its
Nova backend; the agents are a fake data plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fixtures

from nova_ipmigrate import exception
from nova_ipmigrate.accounting import maintenance
from nova_ipmigrate.virt import splitspec
from tests.nova.functional import base
from tests.nova.functional.engine import DataPlane, InProcessEngine

HOSTS = ["host1", "host2", "host3", "host4"]
VM_MB = 1024
RESIDENT_MB = 512
PATH = "libvirt/qemu/1-instance/pc.ram"


class SplitInstanceBase(base.FunctionalBase):
    def setUp(self) -> None:
        super().setUp()
        for h in HOSTS:
            self.start_compute(h)
        self.flavor = self._create_flavor(
            name="split.1g", memory_mb=VM_MB, vcpu=1, disk=1, ephemeral=0,
            extra_spec={splitspec.SPLIT_MEMORY: "true", splitspec.SUB_HOSTS: "2",
                        splitspec.RESIDENT_MB: str(RESIDENT_MB)})
        self.agents = DataPlane(HOSTS, VM_MB)
        self.engine = InProcessEngine(Path(self.tmp), self.agents, HOSTS)
        self.addCleanup(self.engine.close)
        self.ctxt: dict[str, Any] = {}
        # the driver hands a spawned split instance to this engine
        self.useFixture(fixtures.MonkeyPatch(
            "nova_ipmigrate.virt.driver.IPMigrateLibvirtDriver.engine_factory",
            staticmethod(lambda: self.engine.manager)))

    def boot(self, host: str = "host1") -> dict[str, Any]:
        server = self._create_server(flavor_id=self.flavor, networks="none", host=host)
        self.assertEqual(host, server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual({host: {"VCPU": 1, "MEMORY_MB": VM_MB, "DISK_GB": 1}},
                         self.allocations(server["id"]))
        return server

    def split(self, server: dict[str, Any]) -> dict[str, int]:
        """Run the split the driver asked the engine for when it spawned the instance."""
        (op,) = self.engine.db.list(vm=server["id"], kinds=("split",))
        self.assertEqual("host1", op.main_host)
        self.assertRegex(op.path, r"^libvirt/qemu/\d+-instance-[0-9a-f]+/pc\.ram$")
        self.assertEqual(sorted(op.params["sub_hosts"]), sorted(
            op.params["accounting"]["sub_hosts"]))
        done = self.engine.run(op.id)
        self.assertEqual("done", done["state"], done["fault"])
        return self.memory(server)

    def memory(self, server: dict[str, Any], main: str = "host1") -> dict[str, int]:
        """host -> MEMORY_MB of the instance, after checking the rest is exact: VCPU
        and DISK_GB on the main host only, no claim left behind."""
        allocs = self.allocations(server["id"])
        self.assertEqual({main}, {h for h, r in allocs.items() if "VCPU" in r})
        self.assertEqual(1, allocs[main]["VCPU"])
        self.assertEqual(1, allocs[main]["DISK_GB"])
        mem = {h: r["MEMORY_MB"] for h, r in allocs.items() if r.get("MEMORY_MB")}
        self.assertEqual(VM_MB, sum(mem.values()), mem)
        for h in HOSTS:   # every MiB used on a host is the instance's (no leaked claim)
            self.assertEqual(mem.get(h, 0), self.usages(h)["MEMORY_MB"], h)
            self.assertEqual(int(h == main), self.usages(h)["VCPU"], h)
        self.assertEqual([], self.engine.reconcile())
        return mem


class TestSplitInstance(SplitInstanceBase):
    def test_boot_split_partial_migrations_reintegration(self) -> None:
        server = self.boot()
        mem = self.split(server)
        subs = sorted(h for h in mem if h != "host1")
        self.assertEqual(RESIDENT_MB, mem["host1"])
        self.assertEqual([256, 256], [mem[h] for h in subs])
        self.assertEqual(self.agents.layout(server["id"]).keys(), mem.keys())
        spare = next(h for h in HOSTS if h not in mem)

        # partial migration of a sub-host's part, destination chosen by the scheduler:
        # the only host holding no part of the VM
        op = self.engine.manager.partial_migration(self.ctxt, vm=server["id"],
                                                   source_host=subs[0])
        self.assertEqual(spare, op["dest_host"])
        # the claim holds the destination's memory while the pages move
        self.assertEqual(256, self.usages(spare)["MEMORY_MB"])
        self.assertEqual("done", self.engine.run(op["id"])["state"])
        mem = self.memory(server)
        self.assertEqual({"host1": 512, subs[1]: 256, spare: 256}, mem)

        # explicit destination: back onto the host that is free now
        op = self.engine.manager.partial_migration(self.ctxt, vm=server["id"],
                                                   source_host=spare, dest_host=subs[0])
        self.assertEqual("done", self.engine.run(op["id"])["state"])
        self.assertEqual({"host1": 512, subs[0]: 256, subs[1]: 256}, self.memory(server))

        # reintegration: every part onto the main host
        op = self.engine.manager.reintegration(self.ctxt, vm=server["id"])
        self.assertEqual("done", self.engine.run(op["id"])["state"])
        self.assertEqual({"host1": VM_MB}, self.memory(server))
        self.assertEqual({"host1": VM_MB * 256}, self.agents.layout(server["id"]))

    def test_failed_and_refused_moves_change_nothing(self) -> None:
        server = self.boot()
        mem = self.split(server)
        sub = sorted(h for h in mem if h != "host1")[0]
        spare = next(h for h in HOSTS if h not in mem)
        before = self.allocations(server["id"])

        # the main host's agent refuses to start: the operation fails, its claim is
        # given back
        self.agents.refuse["partial_migrate"] = exception.Invalid("no", reason="test")
        op = self.engine.manager.partial_migration(self.ctxt, vm=server["id"],
                                                   source_host=sub)
        done = self.engine.run(op["id"])
        self.assertEqual("failed", done["state"])
        self.assertEqual(before, self.allocations(server["id"]))
        self.assertEqual(0, self.usages(spare)["MEMORY_MB"])
        del self.agents.refuse["partial_migrate"]

        # an aborted move: the same
        self.agents.hold = True
        op = self.engine.manager.partial_migration(self.ctxt, vm=server["id"],
                                                   source_host=sub)
        self.engine.worker.tick()
        self.engine.manager.abort_operation(self.ctxt, op_id=op["id"])
        self.agents.hold = False
        self.assertEqual("aborted", self.engine.run(op["id"])["state"])
        self.assertEqual(before, self.allocations(server["id"]))
        self.assertEqual(0, self.usages(spare)["MEMORY_MB"])

        # a destination without room: placement says no, nothing is created
        self._create_server(flavor_id=self._create_flavor(
            name="big", memory_mb=base.HOST_MB - 128, vcpu=1, disk=1, ephemeral=0),
            networks="none", host=spare)
        n_ops = len(self.engine.db.list())
        self.assertRaises(exception.InsufficientCapacity,
                          self.engine.manager.partial_migration, self.ctxt,
                          vm=server["id"], source_host=sub, dest_host=spare)
        self.assertEqual(n_ops, len(self.engine.db.list()))
        self.assertEqual(before, self.allocations(server["id"]))
        self.assertEqual(base.HOST_MB - 128, self.usages(spare)["MEMORY_MB"])

        # a host that holds no part, the main host as source, a split flavor split twice
        self.assertRaises(exception.Invalid, self.engine.manager.partial_migration,
                          self.ctxt, vm=server["id"], source_host=spare)
        self.assertRaises(exception.Invalid, self.engine.manager.partial_migration,
                          self.ctxt, vm=server["id"], source_host="host1")
        self.assertRaises(exception.Conflict, self.engine.manager.split, self.ctxt,
                          main_host="host1", path=PATH, vm=server["id"])
        self.assertEqual(n_ops, len(self.engine.db.list()))
        self.assertEqual(before, self.allocations(server["id"]))

    def test_split_of_a_plain_flavor_is_refused(self) -> None:
        plain = self._create_flavor(name="plain", memory_mb=VM_MB, vcpu=1, disk=1,
                                    ephemeral=0)
        server = self._create_server(flavor_id=plain, networks="none", host="host1")
        before = self.allocations(server["id"])
        self.assertRaises(exception.Invalid, self.engine.manager.split, self.ctxt,
                          main_host="host1", path=PATH, vm=server["id"])
        self.assertEqual(before, self.allocations(server["id"]))
        self.assertEqual([], self.engine.db.list())

    def test_drift_is_reported(self) -> None:
        server = self.boot()
        mem = self.split(server)
        sub = sorted(h for h in mem if h != "host1")[0]
        # the data plane moved a part behind the engine's back
        self.agents.vms[server["id"]]["pages_by_host"]["host1"] += \
            self.agents.vms[server["id"]]["pages_by_host"].pop(sub)
        drift = self.engine.manager.reconcile(self.ctxt)["drift"]
        self.assertEqual([(server["id"], sub, "memory allocated where no part is"),
                          (server["id"], "host1", "pages without (enough) memory allocated")],
                         sorted(((d["vm"], d["host"], d["why"]) for d in drift),
                                key=lambda d: d[1] != sub))


class TestHostMaintenance(SplitInstanceBase):
    def test_disabling_a_compute_service_drains_its_parts(self) -> None:
        server = self.boot()
        mem = self.split(server)
        sub = sorted(h for h in mem if h != "host1")[0]
        spare = next(h for h in HOSTS if h not in mem)
        endpoint = maintenance.ServiceUpdateEndpoint(
            lambda host: self.engine.manager.host_drain(self.ctxt, host=host),
            ["maintenance"], known=lambda host: host in HOSTS)

        def disable(host: str, reason: str) -> None:
            self.notifier.reset()
            svc = self.admin_api.get_services(binary="nova-compute", host=host)[0]
            self.admin_api.put_service(svc["id"], {"status": "disabled",
                                                   "disabled_reason": reason})
            for n in self.notifier.wait_for_versioned_notifications("service.update"):
                endpoint.info({}, n["publisher_id"], n["event_type"], n["payload"], {})

        disable(spare, "hardware check")           # not a maintenance reason
        self.assertEqual([], self.engine.db.list(kinds=("host_drain",)))
        self.admin_api.put_service(
            self.admin_api.get_services(binary="nova-compute", host=spare)[0]["id"],
            {"status": "enabled"})

        disable(sub, "Maintenance: new DIMMs")
        drains = self.engine.db.list(kinds=("host_drain",))
        self.assertEqual([sub], [d.source_host for d in drains])
        done = self.engine.run(drains[0].id)
        self.assertEqual("done", done["state"], done["fault"])
        mem = self.memory(server)
        self.assertNotIn(sub, mem)
        self.assertEqual(256, mem[spare])
        self.assertNotIn(sub, self.agents.layout(server["id"]))


class TestNovaHousekeeping(SplitInstanceBase):
    """What Nova's own periodic and audit tools make of the parts (documented in
    doc/nova-integration.md): the resource tracker of a sub-host warns but keeps
    them; ``nova-manage placement audit`` reports them as orphaned, and without
    ``--delete`` changes nothing."""

    def test_resource_tracker_and_placement_audit_keep_the_parts(self) -> None:
        import contextlib
        import io

        from nova import context as nova_context
        from nova.cmd import manage

        server = self.boot()
        mem = self.split(server)
        before = self.allocations(server["id"])
        for host in HOSTS:
            self.computes[host].manager.update_available_resource(
                nova_context.get_admin_context())
        self.assertEqual(before, self.allocations(server["id"]))
        self.assertIn("There are allocations remaining against the source host",
                      self.stdlog.logger.output)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = manage.PlacementCommands().audit(verbose=True)
        self.assertEqual(3, rc, out.getvalue())   # orphaned allocations detected
        subs = [h for h in mem if h != "host1"]
        for h in subs:
            self.assertIn(self.compute_rp_uuids[h], out.getvalue())
        self.assertNotIn(self.compute_rp_uuids["host1"] + " can be deleted", out.getvalue())
        self.assertEqual(before, self.allocations(server["id"]))


class TestFlavorExtraSpecs(base.FunctionalBase):
    def test_bad_ipmigrate_extra_specs_get_a_400(self) -> None:
        from nova.tests.functional.api import client

        flavor = self._create_flavor(name="f", memory_mb=1024, vcpu=1, disk=1, ephemeral=0)
        for key, value in ((splitspec.SPLIT_MEMORY, "maybe"), (splitspec.SUB_HOSTS, "0"),
                           (splitspec.RESIDENT_MB, "12"), ("ipmigrate:bogus", "1")):
            exc = self.assertRaises(client.OpenStackApiException,
                                    self.admin_api.post_extra_spec, flavor,
                                    {"extra_specs": {key: value}})
            self.assertEqual(400, exc.response.status_code, key)
        self.admin_api.post_extra_spec(flavor, {"extra_specs": {
            splitspec.SPLIT_MEMORY: "true", splitspec.SUB_HOSTS: "2"}})
        specs = self.admin_api.get_flavor(flavor)["extra_specs"]
        self.assertEqual({splitspec.SPLIT_MEMORY: "true", splitspec.SUB_HOSTS: "2"}, specs)
