"""The compute driver: Nova's libvirt driver, plus split-memory instances.

``compute_driver = ipmigrate.driver.IPMigrateLibvirtDriver`` (``nova.virt.ipmigrate``
is an alias of :mod:`nova_ipmigrate.virt`, see :mod:`nova_ipmigrate.virt.alias`).
For an instance whose flavor asks for split memory (:mod:`.splitspec`) the domain
differs from Nova's in three places, everything else is Nova's:

* its RAM is a shared file (``<source type='file'/><access mode='shared'/>`` in
  libvirt's ``memory_backing_dir``, the agent's memfs), never preallocated nor
  locked (either would fault every page onto the main host) and without
  ``<discard/>``; huge pages are refused;
* QEMU gets an extra QMP monitor, ``-qmp unix:<[ipmigrate] qmp_socket_dir>/<uuid>.qmp``,
  which the agent learns of through its libvirt hook;
* its balloon does not report free pages (QEMU would punch them out of the RAM file).

Nova's own moves of a split instance (live migration, cold migration, resize) would
drop the parts its sub-hosts hold, so they are refused unless the engine marked the
instance (``system_metadata[splitspec.OPERATION_KEY]``) for a move it runs itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import nova.conf
from lxml import etree
from nova import exception
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import driver as libvirt_driver
from oslo_log import log as logging

from nova_ipmigrate.hooks.libvirt_qemu import ram_file_path
from nova_ipmigrate.virt import conf as virt_conf
from nova_ipmigrate.virt import splitspec
from nova_ipmigrate.virt.mainmove import MainMoveHooks

CONF = nova.conf.CONF
virt_conf.register_opts(CONF)
LOG = logging.getLogger(__name__)

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: longest path of a unix socket (sun_path is 108 bytes with the terminating NUL)
_MAX_SOCKET_PATH = 107


class SplitMemoryInvalid(exception.InvalidInput):
    """A split-memory instance that cannot be built as asked (an InvalidInput: the
    compute manager aborts the build rather than rescheduling it)."""

    msg_fmt = "Invalid split-memory instance: %(reason)s"


def split_spec(flavor: Any) -> splitspec.SplitSpec | None:
    """The split ``flavor`` asks for, or None; a malformed one is a Nova exception."""
    try:
        return splitspec.from_extra_specs(flavor.extra_specs, flavor.memory_mb)
    except splitspec.InvalidSplitSpec as exc:
        raise SplitMemoryInvalid(reason=f"flavor {flavor.name}: {exc}") from exc


def qmp_socket_path(instance_uuid: str) -> str:
    """Where the extra QMP monitor of a split instance's QEMU listens."""
    return os.path.join(CONF.ipmigrate.qmp_socket_dir, f"{instance_uuid}.qmp")


def split_domain_xml(xml: str, qmp_socket: str) -> str:
    """Nova's domain ``xml`` as a split instance needs it: QEMU gets an extra QMP
    monitor, ``-qmp unix:<qmp_socket>,server=on,wait=off`` in ``<qemu:commandline>``
    (the namespace declared on ``<domain>``), and the balloon no free page reporting,
    which Nova always turns on: QEMU would punch the guest's free pages out of the RAM
    file, which memfs refuses (EOPNOTSUPP, an error in QEMU's log for each report)."""
    root = etree.fromstring(xml, etree.XMLParser(remove_blank_text=True))
    if root.nsmap.get("qemu") != QEMU_NS:
        # lxml cannot declare a namespace on an existing element: copy the root
        new = etree.Element(root.tag, dict(root.attrib), nsmap={**root.nsmap, "qemu": QEMU_NS})
        new.text = root.text
        new.extend(list(root))
        root = new
    for balloon in root.iterfind("devices/memballoon"):
        balloon.attrib.pop("freePageReporting", None)
    cmdline = root.find(f"{{{QEMU_NS}}}commandline")
    if cmdline is None:
        cmdline = etree.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for value in ("-qmp", f"unix:{qmp_socket},server=on,wait=off"):
        etree.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=value)
    return str(etree.tostring(root, encoding="unicode", pretty_print=True))


def stock_move_refusal(instance: Any, operation: str) -> str | None:
    """Why Nova's own ``operation`` of ``instance`` must not run, or None if it may:
    the instance is not split, or the engine runs this move."""
    try:
        split = splitspec.is_split(instance.flavor.extra_specs)
        detail = ""
    except splitspec.InvalidSplitSpec as exc:
        split, detail = True, f" (its flavor is malformed: {exc})"
    if not split or instance.system_metadata.get(splitspec.OPERATION_KEY):
        return None
    return (f"instance {instance.uuid} is a split-memory instance{detail}: Nova's {operation} "
            "would lose the parts of its RAM that its sub-hosts hold. Its parts move "
            "through nova-ipmigrate: a partial migration for a sub-host's part, a main-host "
            "migration for QEMU and the resident part.")


def default_agents() -> Any:
    """The nova-ipmigrate agents' RPC client on Nova's own transport (the agents
    listen on the same message bus as nova-compute)."""
    from nova import rpc as nova_rpc

    from nova_ipmigrate.agent.rpcapi import AgentAPI

    return AgentAPI(transport=nova_rpc.TRANSPORT)


def default_engine() -> Any:
    """The engine's RPC client on Nova's transport (the engine listens there)."""
    from nova import rpc as nova_rpc

    from nova_ipmigrate.engine.rpcapi import EngineAPI

    return EngineAPI(nova_rpc.TRANSPORT)


def default_ledger() -> Any:
    from nova.scheduler.client import report

    from nova_ipmigrate.accounting.placement import Ledger

    return Ledger(report.report_client_singleton())


class IPMigrateLibvirtDriver(libvirt_driver.LibvirtDriver):
    """LibvirtDriver with split-memory instances (module docstring)."""

    #: how the driver reaches the agents and placement (tests replace them)
    agents_factory: Callable[[], Any] = staticmethod(default_agents)
    ledger_factory: Callable[[], Any] = staticmethod(default_ledger)
    engine_factory: Callable[[], Any] = staticmethod(default_engine)

    def spawn(self, context: Any, instance: Any, image_meta: Any, injected_files: Any,
              admin_password: Any, allocations: Any, network_info: Any = None,
              block_device_info: Any = None, power_on: bool = True,
              accel_info: Any = None) -> Any:
        """Nova's spawn; then a split-memory instance is handed to the engine, which
        splits it as its flavor says (Nova's scheduler picks the sub-hosts). An
        engine that refuses or does not answer leaves the instance running unsplit
        (a warning in the log): split it later with the engine's split operation."""
        result = super().spawn(context, instance, image_meta, injected_files,
                               admin_password, allocations, network_info,
                               block_device_info, power_on, accel_info)
        if split_spec(instance.flavor) is None:
            return result
        guest = self._host.get_guest(instance)
        path = ram_file_path(guest.id, guest.name)
        host = self.__dict__.get("_ipm_host") or CONF.host
        try:
            op = type(self).engine_factory().split(
                {}, main_host=host, path=path, vm=instance.uuid)
            LOG.info("split-memory instance: engine operation %s splits it", op.get("id"),
                     instance=instance)
        except Exception as exc:  # noqa: BLE001 - the instance runs, unsplit
            LOG.warning("split-memory instance runs unsplit on %s: the engine refused or "
                        "did not answer (%s); split it with the engine's split operation "
                        "(main host %s, RAM file %s)", host, exc, host, path,
                        instance=instance)
        return result

    @property
    def _main_moves(self) -> MainMoveHooks:
        hooks = self.__dict__.get("_ipm_main_moves")
        if hooks is None:
            agents: list[Any] = []

            def client() -> Any:
                if not agents:
                    agents.append(type(self).agents_factory())
                return agents[0]
            host = self.__dict__.get("_ipm_host") or CONF.host
            hooks = MainMoveHooks(client, host, type(self).ledger_factory)
            self.__dict__["_ipm_main_moves"] = hooks
        return hooks

    def init_host(self, host: str) -> Any:
        # the compute manager's host: the agents' RPC server names (CONF.host too in
        # a nova-compute process, not in tests running several computes)
        self.__dict__["_ipm_host"] = host
        return super().init_host(host)

    # -- main-host moves run by the engine through Nova (virt/mainmove.py) ---------

    def pre_live_migration(self, context: Any, instance: Any, block_device_info: Any,
                           network_info: Any, disk_info: Any,
                           migrate_data: Any) -> Any:
        result = super().pre_live_migration(context, instance, block_device_info,
                                            network_info, disk_info, migrate_data)
        self._main_moves.pre_live_migration(instance)
        return result

    def live_migration(self, context: Any, instance: Any, dest: str, post_method: Any,
                       recover_method: Any, block_migration: bool = False,
                       migrate_data: Any = None) -> Any:
        hooks = self._main_moves
        if not hooks.prepare_source(instance, dest):
            return super().live_migration(context, instance, dest, post_method,
                                          recover_method, block_migration, migrate_data)

        def post(*args: Any, **kwargs: Any) -> Any:
            hooks.finish_source(instance, ok=True)
            return post_method(*args, **kwargs)

        def recover(*args: Any, **kwargs: Any) -> Any:
            hooks.finish_source(instance, ok=False)
            return recover_method(*args, **kwargs)
        try:
            return super().live_migration(context, instance, dest, post, recover,
                                          block_migration, migrate_data)
        except Exception:
            hooks.finish_source(instance, ok=False)
            raise

    def post_live_migration(self, context: Any, instance: Any, block_device_info: Any,
                            migrate_data: Any = None) -> Any:
        result = super().post_live_migration(context, instance, block_device_info,
                                             migrate_data)
        self._main_moves.post_live_migration(context, instance, migrate_data)
        return result

    def post_live_migration_at_destination(self, context: Any, instance: Any,
                                           network_info: Any, block_migration: bool = False,
                                           block_device_info: Any = None) -> Any:
        result = super().post_live_migration_at_destination(
            context, instance, network_info, block_migration, block_device_info)
        self._main_moves.post_at_destination(instance)
        return result

    def rollback_live_migration_at_destination(self, context: Any, instance: Any,
                                               network_info: Any, block_device_info: Any,
                                               *args: Any, **kwargs: Any) -> Any:
        result = super().rollback_live_migration_at_destination(
            context, instance, network_info, block_device_info, *args, **kwargs)
        self._main_moves.rollback_at_destination(instance)
        return result

    def _get_guest_memory_backing_config(self, inst_topology: Any, numatune: Any,
                                         flavor: Any, image_meta: Any) -> Any:
        spec = split_spec(flavor)
        if spec is None:
            return super()._get_guest_memory_backing_config(inst_topology, numatune, flavor,
                                                            image_meta)
        if inst_topology and any(cell.pagesize for cell in inst_topology.cells):
            raise SplitMemoryInvalid(reason="a memory page size (flavor hw:mem_page_size or "
                                     "image hw_mem_page_size) is asked for: the RAM of a "
                                     "split-memory instance is a file on memfs, not huge "
                                     "pages")
        membacking = super()._get_guest_memory_backing_config(inst_topology, numatune,
                                                              flavor, image_meta)
        if membacking is None:
            membacking = vconfig.LibvirtConfigGuestMemoryBacking()
        if membacking.locked:
            raise SplitMemoryInvalid(reason=f"flavor {flavor.name} asks for locked memory "
                                     "(a realtime CPU policy or memory encryption): it would "
                                     "fault all of a split-memory instance's RAM onto its "
                                     "main host")
        membacking.filesource = True
        membacking.sharedaccess = True
        # [libvirt]file_backed_memory sets both: a prealloc faults every page in, a
        # discard would drop the pages of a RAM file that outlives this QEMU (main-host move)
        membacking.allocateimmediate = False
        membacking.discard = False
        return membacking

    def _get_guest_xml(self, context: Any, instance: Any, network_info: Any, disk_info: Any,
                       image_meta: Any, *args: Any, **kwargs: Any) -> str:
        spec = split_spec(instance.flavor)
        xml: str = super()._get_guest_xml(context, instance, network_info, disk_info,
                                          image_meta, *args, **kwargs)
        if spec is None:
            return xml
        socket_path = qmp_socket_path(instance.uuid)
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise SplitMemoryInvalid(reason=f"QMP socket path {socket_path} is longer than "
                                     f"{_MAX_SOCKET_PATH} bytes: shorten "
                                     "[ipmigrate] qmp_socket_dir")
        LOG.debug("Split-memory instance: %s MiB resident, %s sub-host(s), QMP %s",
                  spec.resident_mb, spec.sub_hosts, socket_path, instance=instance)
        return split_domain_xml(xml, socket_path)

    def check_can_live_migrate_destination(self, context: Any, instance: Any,
                                           *args: Any, **kwargs: Any) -> Any:
        # before Nova's checks, which leave a shared-storage test file behind
        reason = stock_move_refusal(instance, "live migration")
        if reason:
            raise exception.MigrationPreCheckError(reason=reason)
        return super().check_can_live_migrate_destination(context, instance, *args, **kwargs)

    def check_can_live_migrate_source(self, context: Any, instance: Any,
                                      *args: Any, **kwargs: Any) -> Any:
        reason = stock_move_refusal(instance, "live migration")
        if reason:
            raise exception.MigrationPreCheckError(reason=reason)
        return super().check_can_live_migrate_source(context, instance, *args, **kwargs)

    def migrate_disk_and_power_off(self, context: Any, instance: Any,
                                   *args: Any, **kwargs: Any) -> Any:
        # before Nova powers the guest off; InstanceFaultRollback: the compute manager
        # puts the instance back in its vm_state and re-raises the inner error
        reason = stock_move_refusal(instance, "cold migration or resize")
        if reason:
            raise exception.InstanceFaultRollback(
                exception.MigrationPreCheckError(reason=reason))
        return super().migrate_disk_and_power_off(context, instance, *args, **kwargs)
