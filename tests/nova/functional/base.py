"""The functional-test base: Nova's own API, conductor, scheduler and placement
fixtures, with compute services running the plug-in's driver against Nova's fake
libvirt (``nova.tests.functional.libvirt.base.ServersTestBase``), in Nova's native
threading mode (``tests/nova/__init__.py``)."""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

import fixtures
from nova.tests.functional.libvirt import base

from nova_ipmigrate.virt import alias

DRIVER = "ipmigrate.driver.IPMigrateLibvirtDriver"
FILTER = "nova_ipmigrate.scheduler.filters.SplitMemoryFilter"
WEIGHER = "nova_ipmigrate.scheduler.weighers.SplitMemoryWeigher"
#: MEMORY_MB of every compute ([libvirt] file_backed_memory)
HOST_MB = 4096


@functools.cache
def api_paste_config() -> str:
    """Nova's api-paste.ini as the wheel installs it (``<prefix>/etc/nova``): Nova's
    fixture looks for it in a source-tree layout."""
    for f in importlib.metadata.files("nova") or ():
        if str(f).endswith("etc/nova/api-paste.ini"):
            return str(f.locate().resolve())
    raise RuntimeError("nova's etc/nova/api-paste.ini is not installed")


class FunctionalBase(base.ServersTestBase):
    """Nova's libvirt functional base with the plug-in's driver, filter and weigher,
    file-backed guest memory, usable from an installed Nova."""

    microversion = "latest"
    ADMIN_API = True
    ADDITIONAL_FILTERS = ["SplitMemoryFilter"]

    def setUp(self) -> None:
        alias.install()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        super().setUp()

    def _setup_services(self) -> Any:
        self.flags(api_paste_config=api_paste_config(), group="wsgi")
        self.flags(file_backed_memory=HOST_MB, group="libvirt")
        self.flags(ram_allocation_ratio=1.0, reserved_host_memory_mb=0)
        return super()._setup_services()

    def _setup_scheduler_service(self) -> Any:
        self.flags(available_filters=["nova.scheduler.filters.all_filters", FILTER],
                   weight_classes=["nova.scheduler.weights.all_weighers", WEIGHER],
                   group="filter_scheduler")
        return super()._setup_scheduler_service()

    def _setup_compute_service(self) -> Any:
        result = super()._setup_compute_service()
        self.flags(compute_driver=DRIVER)
        return result

    # -- placement ------------------------------------------------------------------

    def allocations(self, consumer: str) -> dict[str, dict[str, int]]:
        """host -> resources of a consumer (hosts by name)."""
        body = self.placement.get(f"/allocations/{consumer}", version="1.28").body
        by_rp = {rp: h for h, rp in self.compute_rp_uuids.items()}
        return {by_rp.get(rp, rp): dict(a["resources"])
                for rp, a in body["allocations"].items()}

    def usages(self, host: str) -> dict[str, int]:
        rp = self.compute_rp_uuids[host]
        return dict(self.placement.get(f"/resource_providers/{rp}/usages").body["usages"])
