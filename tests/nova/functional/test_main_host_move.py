"""The main-host move of a split instance, run by the engine as Nova's own live
migration: the driver's live-migration hooks call the agents, placement ends
exact (the sub-hosts' parts survive the migration consumer, the new main host
keeps only the resident part), and a failed migration changes nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import fixtures
from nova import objects

from nova_ipmigrate.virt import splitspec
from tests.nova.functional.test_split_instances import HOSTS, RESIDENT_MB, SplitInstanceBase


class TestMainHostMoveThroughNova(SplitInstanceBase):
    def setUp(self) -> None:
        super().setUp()
        self.fail_migration = False
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.libvirt.Domain.migrateToURI3", self._migrate))
        self.useFixture(fixtures.MonkeyPatch(
            "nova_ipmigrate.virt.driver.IPMigrateLibvirtDriver.agents_factory",
            staticmethod(lambda: self.agents)))
        self.server = self.boot()
        self.mem = self.split(self.server)
        self.spare = next(h for h in HOSTS if h not in self.mem)

    def _migrate(self, domain: Any, destination: str, params: dict[str, Any],
                 flags: int) -> None:
        """Fake libvirt's migration: the domain appears on the destination's
        connection (as nova's LibvirtMigrationMixin does), or its job fails (as
        libvirt's does when the destination QEMU fails to load)."""
        if self.fail_migration:
            domain.fail_job()
            return
        dest = urlparse(destination).hostname
        self.computes[dest].driver._host.get_connection().createXML(
            params["destination_xml"], "fake-createXML-doesnt-care-about-flags")
        domain.complete_job()

    def marks(self) -> tuple[Any, Any]:
        ctxt = self.engine.backend.ctxt()
        inst = self.api.get_server(self.server["id"])
        spec = objects.RequestSpec.get_by_instance_uuid(ctxt, self.server["id"])
        meta = self.engine.backend._instance(ctxt, inst["id"]).system_metadata
        return meta.get(splitspec.OPERATION_KEY), (spec.scheduler_hints or {}).get(
            splitspec.HINT_OPERATION)

    def test_main_host_migration_with_a_scheduled_destination(self) -> None:
        op = self.engine.manager.main_host_migration(self.ctxt, vm=self.server["id"])
        self.assertEqual(self.spare, op["dest_host"])   # the only host holding nothing
        done = self.engine.run(op["id"])
        self.assertEqual("done", done["state"], done["fault"])
        server = self.api.get_server(self.server["id"])
        self.assertEqual(self.spare, server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual("ACTIVE", server["status"])
        mem = self.memory(self.server, main=self.spare)
        self.assertEqual(RESIDENT_MB, mem[self.spare])
        self.assertEqual({h: n for h, n in self.mem.items() if h != "host1"},
                         {h: n for h, n in mem.items() if h != self.spare})
        self.assertNotIn("host1", mem)
        self.assertEqual(0, self.usages("host1")["MEMORY_MB"])
        # the data plane: D expected the VM, M froze and committed, D pulled M's pages
        calls = [(m, h) for m, h, _ in self.agents.mutating_calls()] + [
            (m, h) for m, h, _ in self.agents.calls if m.startswith("main_")]
        for call in [("incoming_prepare", self.spare), ("main_prepare_source", "host1"),
                     ("main_finish_source", "host1"), ("incoming_commit", self.spare)]:
            self.assertIn(call, calls)
        finish = [kw for m, _, kw in self.agents.calls if m == "main_finish_source"]
        self.assertEqual([True], [kw["ok"] for kw in finish])
        self.assertNotIn("host1", self.agents.layout(self.server["id"]))
        self.assertEqual((None, None), self.marks())
        # unmarked again: Nova's own live migration is refused as before
        self.api.post_server_action(
            self.server["id"], {"os-migrateLive": {"host": None, "block_migration": "auto"}},
            check_response_status=[202, 500])
        self._wait_for_state_change(self.server, "ACTIVE")
        self.assertEqual(mem, self.memory(self.server, main=self.spare))

    def test_failed_migration_changes_nothing(self) -> None:
        before = self.allocations(self.server["id"])
        self.fail_migration = True
        op = self.engine.manager.main_host_migration(self.ctxt, vm=self.server["id"],
                                                     dest_host=self.spare)
        done = self.engine.run(op["id"])
        self.assertEqual("failed", done["state"])
        self.assertIn("the VM goes on at host1", done["fault"])
        server = self._wait_for_state_change(self.server, "ACTIVE")
        self.assertEqual("host1", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(before, self.allocations(self.server["id"]))
        self.assertEqual(self.mem, self.memory(self.server))
        finish = [kw["ok"] for m, _, kw in self.agents.calls if m == "main_finish_source"]
        self.assertEqual([False], finish)
        self.assertIn(("incoming_abort", self.spare),
                      [(m, h) for m, h, _ in self.agents.calls])
        self.assertEqual((None, None), self.marks())

    def test_refusals_change_nothing(self) -> None:
        from nova_ipmigrate import exception
        sub = next(h for h in self.mem if h != "host1")
        for dest in (sub, "host1"):
            self.assertRaises(exception.Invalid, self.engine.manager.main_host_migration,
                              self.ctxt, vm=self.server["id"], dest_host=dest)
        self.assertEqual([], self.engine.db.list(kinds=("main_host_migration",)))
        self.assertEqual((None, None), self.marks())
