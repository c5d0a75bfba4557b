"""IPMigrateLibvirtDriver: the domain XML of split-memory instances, built through
Nova's own LibvirtDriver code path on Nova's fake libvirt, and the move guards."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import nova.conf
import os_vif
import pytest
from lxml import etree
from nova import context as nova_context
from nova import exception, objects
from nova.network import model as network_model
from nova.tests import fixtures as nova_fixtures
from nova.virt import driver as virt_driver
from nova.virt import fake
from nova.virt.libvirt import blockinfo
from nova.virt.libvirt import driver as libvirt_driver
from oslo_utils.fixture import uuidsentinel as uuids

from nova_ipmigrate.hooks import libvirt_qemu
from nova_ipmigrate.virt import alias, driver, splitspec

CONF = nova.conf.CONF
objects.register_all()

QEMU = f"{{{driver.QEMU_NS}}}"
SPLIT = {splitspec.SPLIT_MEMORY: "true", splitspec.SUB_HOSTS: "2"}


@pytest.fixture
def conf(tmp_path: Path) -> Iterator[Any]:
    """Nova's CONF as Nova's unit tests set it up, with fake libvirt in place."""
    with nova_fixtures.ConfFixture(CONF) as cf, nova_fixtures.LibvirtFixture(), \
            nova_fixtures.CGroupsFixture():
        cf.config(instances_path=str(tmp_path))
        os_vif.initialize()
        yield cf


@pytest.fixture
def drvr(conf: Any) -> driver.IPMigrateLibvirtDriver:
    return driver.IPMigrateLibvirtDriver(fake.FakeVirtAPI(), True)


def make_flavor(extra_specs: dict[str, str] | None = None, memory_mb: int = 2048) -> Any:
    return objects.Flavor(id=2, name="m1.split", flavorid="1", memory_mb=memory_mb, vcpus=2,
                          root_gb=10, ephemeral_gb=0, swap=0, vcpu_weight=None,
                          rxtx_factor=1.0, extra_specs=dict(extra_specs or {}))


def make_instance(extra_specs: dict[str, str] | None = None,
                  system_metadata: dict[str, str] | None = None) -> Any:
    """An instance as Nova's libvirt unit tests make one (``_create_test_instance``)."""
    flavor = make_flavor(extra_specs)
    return objects.Instance(
        id=1, uuid=uuids.instance, display_name="split", vcpus=2, memory_mb=2048,
        project_id="fake", user_id="fake", image_ref=uuids.image, root_gb=10, ephemeral_gb=0,
        system_metadata=dict(system_metadata or {}), flavor=flavor, new_flavor=None,
        old_flavor=None, pci_devices=objects.PciDeviceList(), numa_topology=None,
        config_drive=None, vm_mode=None, vm_state=None, task_state=None, kernel_id=None,
        ramdisk_id=None, os_type="linux", ephemeral_key_uuid=None, vcpu_model=None,
        host="main", node="main", trusted_certs=None, resources=None, migration_context=None,
        info_cache=None, cleaned=False)


def guest_xml(drvr: libvirt_driver.LibvirtDriver, instance: Any) -> str:
    """The domain XML spawn would define (``_get_guest_xml``, Nova's whole path)."""
    image_meta = objects.ImageMeta.from_dict({"disk_format": "raw"})
    disk_info = blockinfo.get_disk_info(CONF.libvirt.virt_type, instance, image_meta)
    xml: str = drvr._get_guest_xml(nova_context.get_admin_context(), instance,
                                   network_model.NetworkInfo([]), disk_info, image_meta)
    return xml


def without_time(xml: str) -> str:
    return re.sub(r"<nova:creationTime>[^<]*</nova:creationTime>", "", xml)


def qmp_args(root: Any) -> list[str]:
    return [arg.get("value") for arg in root.iterfind(f"{QEMU}commandline/{QEMU}arg")]


# -- domain XML ---------------------------------------------------------------------


def test_split_instance_ram_is_a_shared_file_without_prealloc(
        drvr: driver.IPMigrateLibvirtDriver) -> None:
    root = etree.fromstring(guest_xml(drvr, make_instance(SPLIT)))
    backing = root.findall("memoryBacking")
    assert len(backing) == 1
    assert [(child.tag, dict(child.attrib)) for child in backing[0]] == [
        ("source", {"type": "file"}), ("access", {"mode": "shared"})]
    assert root.find(".//allocation") is None
    assert root.find(".//discard") is None
    assert root.find(".//hugepages") is None


def test_split_instance_gets_its_qmp_monitor(drvr: driver.IPMigrateLibvirtDriver) -> None:
    xml = guest_xml(drvr, make_instance(SPLIT))
    root = etree.fromstring(xml)
    socket = f"/run/ipmigrate/{uuids.instance}.qmp"
    assert qmp_args(root) == ["-qmp", f"unix:{socket},server=on,wait=off"]
    assert root.nsmap["qemu"] == driver.QEMU_NS        # declared on <domain>
    # what the agent's libvirt hook reads from this very XML
    assert libvirt_qemu.parse_domain(xml)["qmp"] == socket
    assert libvirt_qemu.parse_domain(xml)["vm"] == uuids.instance


def test_split_instance_balloon_does_not_report_free_pages(
        drvr: driver.IPMigrateLibvirtDriver) -> None:
    balloon = etree.fromstring(guest_xml(drvr, make_instance(SPLIT))).find("devices/memballoon")
    assert balloon is not None and balloon.get("model") == "virtio"
    assert "freePageReporting" not in balloon.attrib


def test_qmp_socket_dir_option(conf: Any, drvr: driver.IPMigrateLibvirtDriver) -> None:
    conf.config(qmp_socket_dir="/var/run/ipm", group="ipmigrate")
    root = etree.fromstring(guest_xml(drvr, make_instance(SPLIT)))
    assert qmp_args(root)[1] == f"unix:/var/run/ipm/{uuids.instance}.qmp,server=on,wait=off"


def test_too_long_qmp_socket_path_is_refused(conf: Any,
                                             drvr: driver.IPMigrateLibvirtDriver) -> None:
    conf.config(qmp_socket_dir="/run/" + "d" * 80, group="ipmigrate")
    with pytest.raises(driver.SplitMemoryInvalid, match="qmp_socket_dir"):
        guest_xml(drvr, make_instance(SPLIT))


def test_split_instance_overrides_file_backed_memory_prealloc(
        conf: Any, drvr: driver.IPMigrateLibvirtDriver) -> None:
    conf.config(file_backed_memory=8192, group="libvirt")
    root = etree.fromstring(guest_xml(drvr, make_instance(SPLIT)))
    assert [child.tag for child in root.find("memoryBacking")] == ["source", "access"]


def test_non_split_instance_is_exactly_nova_s(conf: Any,
                                              drvr: driver.IPMigrateLibvirtDriver) -> None:
    stock = libvirt_driver.LibvirtDriver(fake.FakeVirtAPI(), True)
    for specs in ({}, {splitspec.SPLIT_MEMORY: "false", splitspec.SUB_HOSTS: "3"}):
        ours = guest_xml(drvr, make_instance(specs))
        assert without_time(ours) == without_time(guest_xml(stock, make_instance(specs)))
        root = etree.fromstring(ours)
        assert root.find("memoryBacking") is None
        assert qmp_args(root) == []
        assert root.find("devices/memballoon").get("freePageReporting") == "on"


def test_non_split_instance_keeps_nova_s_file_backed_memory(
        conf: Any, drvr: driver.IPMigrateLibvirtDriver) -> None:
    conf.config(file_backed_memory=8192, group="libvirt")
    root = etree.fromstring(guest_xml(drvr, make_instance()))
    assert [child.tag for child in root.find("memoryBacking")] == [
        "source", "access", "allocation", "discard"]


def test_hugepages_are_refused(drvr: driver.IPMigrateLibvirtDriver) -> None:
    topology = objects.InstanceNUMATopology(cells=[objects.InstanceNUMACell(
        id=0, cpuset=set(), pcpuset={0, 1}, memory=2048, pagesize=2048)])
    flavor = make_flavor({**SPLIT, "hw:mem_page_size": "2MB"})
    with pytest.raises(driver.SplitMemoryInvalid, match="hw:mem_page_size") as err:
        drvr._get_guest_memory_backing_config(topology, None, flavor,
                                              objects.ImageMeta.from_dict({}))
    assert isinstance(err.value, exception.InvalidInput)   # the build aborts, no reschedule


def test_locked_memory_is_refused(drvr: driver.IPMigrateLibvirtDriver) -> None:
    with mock.patch("nova.virt.hardware.get_locked_memory_constraint", return_value=True), \
            pytest.raises(driver.SplitMemoryInvalid, match="locked memory"):
        drvr._get_guest_memory_backing_config(None, None, make_flavor(SPLIT),
                                              objects.ImageMeta.from_dict({}))


@pytest.mark.parametrize(("specs", "key"), [
    ({splitspec.SPLIT_MEMORY: "maybe"}, splitspec.SPLIT_MEMORY),
    ({**SPLIT, splitspec.SUB_HOSTS: "0"}, splitspec.SUB_HOSTS),
    ({**SPLIT, splitspec.RESIDENT_MB: "4096"}, splitspec.RESIDENT_MB),
])
def test_malformed_flavor_fails_spawn_clearly(drvr: driver.IPMigrateLibvirtDriver,
                                              specs: dict[str, str], key: str) -> None:
    with pytest.raises(driver.SplitMemoryInvalid) as err:
        guest_xml(drvr, make_instance(specs))
    message = err.value.format_message()
    assert key in message and "m1.split" in message
    assert isinstance(err.value, exception.InvalidInput)
    assert isinstance(err.value.__cause__, splitspec.InvalidSplitSpec)


def test_split_domain_xml_appends_to_an_existing_commandline() -> None:
    xml = (f"<domain xmlns:qemu='{driver.QEMU_NS}'><name>x</name><qemu:commandline>"
           "<qemu:env name='A' value='1'/></qemu:commandline></domain>")
    root = etree.fromstring(driver.split_domain_xml(xml, "/run/q.qmp"))
    assert len(root.findall(f"{QEMU}commandline")) == 1
    assert [e.tag for e in root.find(f"{QEMU}commandline")] == [f"{QEMU}env", f"{QEMU}arg",
                                                               f"{QEMU}arg"]


def test_compute_driver_option_loads_the_driver(conf: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver`` through Nova's loader."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    alias.install()
    try:
        loaded = virt_driver.load_compute_driver(fake.FakeVirtAPI(),
                                                 "ipmigrate.driver.IPMigrateLibvirtDriver")
    finally:
        for name in [n for n in sys.modules if n.startswith(alias.ALIAS)]:
            del sys.modules[name]
    assert type(loaded) is driver.IPMigrateLibvirtDriver


# -- guards against Nova's own moves ------------------------------------------------

GUARDS = ["check_can_live_migrate_destination", "check_can_live_migrate_source",
          "migrate_disk_and_power_off"]


def call_guard(drvr: driver.IPMigrateLibvirtDriver, name: str, instance: Any) -> Any:
    args = {"check_can_live_migrate_destination": ({}, {}),
            "check_can_live_migrate_source": ({},),
            "migrate_disk_and_power_off": ("dest", make_flavor(), [])}[name]
    return getattr(drvr, name)(nova_context.get_admin_context(), instance, *args)


@pytest.mark.parametrize("name", GUARDS)
def test_guard_refuses_nova_s_move_of_a_split_instance(
        drvr: driver.IPMigrateLibvirtDriver, name: str) -> None:
    with mock.patch.object(libvirt_driver.LibvirtDriver, name) as nova_s:
        with pytest.raises((exception.MigrationPreCheckError,
                            exception.InstanceFaultRollback)) as err:
            call_guard(drvr, name, make_instance(SPLIT))
    nova_s.assert_not_called()
    error = err.value
    if name == "migrate_disk_and_power_off":
        # the compute manager re-raises the inner error, the instance keeps its state
        assert isinstance(error, exception.InstanceFaultRollback)
        error = error.inner_exception
    assert type(error) is exception.MigrationPreCheckError
    message = error.format_message()
    assert uuids.instance in message
    assert "split-memory instance" in message and "nova-ipmigrate" in message
    assert "partial migration" in message and "main-host migration" in message


@pytest.mark.parametrize("name", GUARDS)
@pytest.mark.parametrize(("specs", "sysmeta"), [
    (SPLIT, {splitspec.OPERATION_KEY: "op-1"}),     # the engine runs this move
    ({}, {}),                                       # not split
    ({splitspec.SPLIT_MEMORY: "no"}, {}),
])
def test_guard_lets_through(drvr: driver.IPMigrateLibvirtDriver, name: str,
                            specs: dict[str, str], sysmeta: dict[str, str]) -> None:
    instance = make_instance(specs, sysmeta)
    with mock.patch.object(libvirt_driver.LibvirtDriver, name,
                           return_value=mock.sentinel.result) as nova_s:
        assert call_guard(drvr, name, instance) is mock.sentinel.result
    nova_s.assert_called_once()
    assert nova_s.call_args.args[1] is instance


def test_guard_refuses_a_malformed_split_flavor(drvr: driver.IPMigrateLibvirtDriver) -> None:
    with pytest.raises(exception.MigrationPreCheckError, match="malformed"):
        call_guard(drvr, GUARDS[0], make_instance({splitspec.SPLIT_MEMORY: "maybe"}))
