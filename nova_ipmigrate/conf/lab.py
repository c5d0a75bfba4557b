"""Options of the [lab] group: the on-one-machine lab of compute hosts as namespaces."""

from __future__ import annotations

from oslo_config import cfg

from nova_ipmigrate.conf import paths

lab_group = cfg.OptGroup(
    name="lab",
    title="Lab options",
    help="The on-one-machine lab (ipmigrate-lab): compute hosts as network, mount and UTS "
    "namespaces joined by veth pairs to a bridge in a switch namespace, each link "
    "optionally shaped with tc.",
)

LAB_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "state_dir",
        default=paths.state_path_def("lab"),
        help="Directory of the lab state: one subdirectory per lab prefix with the state "
        "file listing everything the lab created, the namespace files and each host's "
        "state directory.",
    ),
    cfg.StrOpt(
        "prefix",
        default="ipm",
        regex=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$",
        max_length=16,
        help="Name prefix of the lab's namespaces and host names (<prefix>-h1, "
        "<prefix>-sw). Labs with different prefixes can be up at the same time.",
    ),
    cfg.StrOpt(
        "subnet",
        default="10.254.0.0/24",
        help="IPv4 subnet (CIDR) of the lab hosts: host hN gets the (N+1)-th address. "
        "Traffic never leaves the lab's own namespaces and bridge.",
    ),
    cfg.StrOpt(
        "default_link",
        default="",
        help="tc rate that shapes each host's link in both directions when "
        "ipmigrate-lab up gets no --link (e.g. 1gbit, 100mbit); empty: unshaped.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(lab_group)
    conf.register_opts(LAB_OPTS, group=lab_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(lab_group, LAB_OPTS)]
