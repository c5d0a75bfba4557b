"""Options of the [libvirt] group: the main-host move through libvirt."""

from __future__ import annotations

from oslo_config import cfg

libvirt_group = cfg.OptGroup(
    name="libvirt",
    title="libvirt options",
    help="How the agent of a split VM's main host moves its vCPUs and devices to another "
    "host: a libvirt live migration with QEMU's x-ignore-shared capability, while memfs "
    "hands the page directory over.",
)

LIBVIRT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "connection_uri",
        default="qemu:///system",
        help="libvirt connection URI of this host's libvirtd.",
    ),
    cfg.StrOpt(
        "peer_uri",
        default="qemu+tcp://{address}/system",
        help="libvirt URI of the destination host's libvirtd for a peer-to-peer "
        "migration; '{address}' and '{host}' are replaced by the destination's fabric "
        "address and host name. Use qemu+tls:// (or qemu+ssh://) outside a lab.",
    ),
    cfg.StrOpt(
        "migrate_uri",
        default="tcp://{address}",
        help="URI QEMU's migration stream goes to ('{address}', '{host}' as in "
        "peer_uri). With x-ignore-shared it carries only device state and the few "
        "non-shared RAM blocks (firmware, ROMs): about 200 KB.",
    ),
    cfg.IntOpt(
        "migration_timeout",
        default=300,
        min=10,
        help="Seconds the libvirt migration of a main-host move may take before it is "
        "aborted (the VM goes on at the source).",
    ),
    cfg.FloatOpt(
        "directory_timeout",
        default=20.0,
        min=1.0,
        help="Seconds the new main host waits for the old one to hand the page directory "
        "over (the source pauses for the switchover first). Past it the destination "
        "fails to load and libvirt resumes the source.",
    ),
    cfg.StrOpt(
        "virsh",
        default="virsh",
        help="The virsh command the agent runs the migration with.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(libvirt_group)
    conf.register_opts(LIBVIRT_OPTS, group=libvirt_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(libvirt_group, LIBVIRT_OPTS)]
