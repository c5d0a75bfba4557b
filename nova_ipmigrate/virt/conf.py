"""Options of the compute driver: group ``[ipmigrate]`` of nova-compute's own nova.conf.

Not the agent's configuration (:mod:`nova_ipmigrate.conf`, whose ``[libvirt]`` group
must never be registered into Nova's CONF, where ``[libvirt]`` is Nova's). The driver
registers these on ``nova.conf.CONF`` when it is imported.
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

ipmigrate_group = cfg.OptGroup(
    name="ipmigrate",
    title="nova-ipmigrate compute driver options",
    help="How IPMigrateLibvirtDriver (compute_driver = ipmigrate.driver."
    "IPMigrateLibvirtDriver) builds the domains of split-memory instances.",
)

DRIVER_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "qmp_socket_dir",
        default="/run/ipmigrate",
        help="Directory of the extra QMP monitor of each split-memory instance: QEMU "
        "listens on <qmp_socket_dir>/<instance uuid>.qmp (a '-qmp unix:...' argument in "
        "the domain's <qemu:commandline>), which the nova-ipmigrate agent learns from "
        "its libvirt hook. The directory must exist on every compute host and QEMU "
        "(libvirt's qemu user, and its AppArmor/SELinux profile) must be allowed to "
        "create sockets in it.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(ipmigrate_group)
    conf.register_opts(DRIVER_OPTS, group=ipmigrate_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(ipmigrate_group, DRIVER_OPTS)]


def list_nova_opts() -> list[tuple[Any, Any]]:
    """Every option nova-ipmigrate adds to Nova's own nova.conf: the driver's
    ``[ipmigrate]`` and the scheduler plug-ins' ``[ipmigrate_scheduler]``
    (oslo.config.opts namespace ``nova-ipmigrate.nova``)."""
    from nova_ipmigrate.scheduler import conf as scheduler_conf

    return list_opts() + list(scheduler_conf.list_opts())
