"""The domain XML IPMigrateLibvirtDriver generates for a split-memory instance.

``python -m tests.nova.tools.domain_xml --uuid U --memory-mb N --resident-mb R
--sub-hosts S --qmp-dir D [--out FILE]`` builds the XML through the driver's real
``_get_guest_xml`` (Nova's whole LibvirtDriver path) on Nova's fake libvirt
connection, with Nova's own test fixtures (ConfFixture, LibvirtFixture,
CGroupsFixture), ``[libvirt] virt_type = qemu`` and ``[ipmigrate] qmp_socket_dir = D``,
for a flavor with the ``ipmigrate:*`` extra specs, and prints it (or writes it to
FILE). The integration test ``tests/integration/test_driver_xml_libvirt.py`` runs
this XML on a lab host's real libvirtd.

It runs in a process of its own: importing :mod:`tests.nova` first puts Nova into
its threading mode, which Nova refuses once eventlet is imported (the integration
tests' process may have imported it).
"""

from __future__ import annotations

import tests.nova  # noqa: F401 - first: Nova's concurrency mode (threading)

# isort: split

import argparse
import sys
from pathlib import Path
from typing import Any

import fixtures
import nova.conf
import os_vif
from nova import context as nova_context
from nova import objects
from nova.network import model as network_model
from nova.tests import fixtures as nova_fixtures
from nova.virt import fake
from nova.virt.libvirt import blockinfo

from nova_ipmigrate.virt import driver, splitspec

CONF = nova.conf.CONF


def split_flavor(memory_mb: int, resident_mb: int, sub_hosts: int) -> Any:
    return objects.Flavor(
        id=2, name="m1.split", flavorid="1", memory_mb=memory_mb, vcpus=1, root_gb=1,
        ephemeral_gb=0, swap=0, vcpu_weight=None, rxtx_factor=1.0,
        extra_specs={splitspec.SPLIT_MEMORY: "true", splitspec.SUB_HOSTS: str(sub_hosts),
                     splitspec.RESIDENT_MB: str(resident_mb)})


def split_instance(instance_uuid: str, flavor: Any) -> Any:
    """An instance as Nova's libvirt unit tests make one; id 1: ``instance-00000001``."""
    return objects.Instance(
        id=1, uuid=instance_uuid, display_name="split", vcpus=flavor.vcpus,
        memory_mb=flavor.memory_mb, project_id="fake", user_id="fake",
        image_ref="155d900f-4e14-4e4c-a73d-069cbf4541e6", root_gb=flavor.root_gb,
        ephemeral_gb=0, system_metadata={}, flavor=flavor, new_flavor=None, old_flavor=None,
        pci_devices=objects.PciDeviceList(), numa_topology=None, config_drive=None,
        vm_mode=None, vm_state=None, task_state=None, kernel_id=None, ramdisk_id=None,
        os_type="linux", ephemeral_key_uuid=None, vcpu_model=None, host="main",
        node="main", trusted_certs=None, resources=None, migration_context=None,
        info_cache=None, cleaned=False)


def generate(instance_uuid: str, memory_mb: int, resident_mb: int, sub_hosts: int,
             qmp_dir: str) -> str:
    """The XML ``spawn`` would define for the instance (``_get_guest_xml``)."""
    objects.register_all()
    with fixtures.TempDir() as tmp, nova_fixtures.ConfFixture(CONF) as cf, \
            nova_fixtures.LibvirtFixture(), nova_fixtures.CGroupsFixture():
        cf.config(instances_path=tmp.path)
        cf.config(virt_type="qemu", group="libvirt")
        cf.config(qmp_socket_dir=qmp_dir, group="ipmigrate")
        os_vif.initialize()
        drvr = driver.IPMigrateLibvirtDriver(fake.FakeVirtAPI(), True)
        instance = split_instance(instance_uuid, split_flavor(memory_mb, resident_mb,
                                                              sub_hosts))
        image_meta = objects.ImageMeta.from_dict({"disk_format": "raw"})
        disk_info = blockinfo.get_disk_info(CONF.libvirt.virt_type, instance, image_meta)
        xml: str = drvr._get_guest_xml(nova_context.get_admin_context(), instance,
                                       network_model.NetworkInfo([]), disk_info, image_meta)
    return xml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.nova.tools.domain_xml",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--uuid", required=True, help="the instance's UUID")
    parser.add_argument("--memory-mb", type=int, required=True, help="the flavor's RAM")
    parser.add_argument("--resident-mb", type=int, required=True,
                        help="ipmigrate:resident_mb")
    parser.add_argument("--sub-hosts", type=int, required=True, help="ipmigrate:sub_hosts")
    parser.add_argument("--qmp-dir", required=True, help="[ipmigrate] qmp_socket_dir")
    parser.add_argument("--out", type=Path, help="write the XML here (default: stdout)")
    args = parser.parse_args(argv)
    xml = generate(args.uuid, args.memory_mb, args.resident_mb, args.sub_hosts, args.qmp_dir)
    if args.out is not None:
        args.out.write_text(xml)
    else:
        sys.stdout.write(xml)
    return 0


if __name__ == "__main__":
    sys.exit(main())
