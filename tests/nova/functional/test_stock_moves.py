"""Nova's own moves of a split-memory instance (live migration, cold migration,
resize, evacuation) are refused and change nothing: a stock move would allocate
the whole flavor on one destination and silently drop the sub-host parts."""

from __future__ import annotations

from typing import Any

from nova.tests.functional.api import client

from tests.nova.functional.test_split_instances import VM_MB, SplitInstanceBase


class TestStockMovesOfSplitInstances(SplitInstanceBase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.boot()
        self.mem = self.split(self.server)
        self.before = self.allocations(self.server["id"])

    def refused(self, body: dict[str, Any], api: Any = None) -> None:
        """Post a server action Nova's scheduler must find no host for. Nova's API
        answers 202 and the conductor fails the move; under Nova's CastAsCall test
        fixture the conductor's NoValidHost comes back through the API instead."""
        try:
            (api or self.api).post_server_action(self.server["id"], body)
        except client.OpenStackApiException as exc:
            self.assertIn("NoValidHost", str(exc))
        self._wait_for_migration_status(self.server, ["error"])

    def unchanged(self, server: dict[str, Any] | None = None) -> None:
        server = self.api.get_server(self.server["id"])
        self.assertEqual("host1", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(self.before, self.allocations(self.server["id"]))
        self.assertEqual(self.mem, self.memory(self.server))
        self.assertEqual(self.agents.layout(self.server["id"]).keys(), self.mem.keys())

    def test_live_migration_is_refused(self) -> None:
        for host in (None, "host4" if "host4" not in self.mem else "host3"):
            self.refused({"os-migrateLive": {"host": host, "block_migration": "auto"}})
            self._wait_for_state_change(self.server, "ACTIVE")
            self.unchanged()

    def test_cold_migration_and_resize_are_refused(self) -> None:
        self.refused({"migrate": None})
        self._wait_for_state_change(self.server, "ACTIVE")
        self.unchanged()
        bigger = self._create_flavor(name="split.2g", memory_mb=2 * VM_MB, vcpu=1, disk=1,
                                     ephemeral=0, extra_spec={"ipmigrate:split_memory": "true"})
        self.refused({"resize": {"flavorRef": bigger}})
        self._wait_for_state_change(self.server, "ACTIVE")
        self.unchanged()

    def test_evacuation_is_refused(self) -> None:
        svc = self.admin_api.get_services(binary="nova-compute", host="host1")[0]
        self.computes["host1"].stop()
        self.admin_api.put_service_force_down(svc["id"], True)
        self.refused({"evacuate": {}}, api=self.admin_api)
        # a failed evacuation leaves the instance ERROR (Nova's own rule): where it
        # is and what it holds do not change
        server = self._wait_for_state_change(self.server, "ERROR")
        self.assertEqual("host1", server["OS-EXT-SRV-ATTR:host"])
        self.assertEqual(self.before, self.allocations(self.server["id"]))
