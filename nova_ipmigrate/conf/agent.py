"""Options of the [agent] group: the per-host daemon (memfs, sub-host store, fabric)."""

from __future__ import annotations

from oslo_config import cfg

from nova_ipmigrate.conf import paths

agent_group = cfg.OptGroup(
    name="agent",
    title="agent options",
    help="The nova-ipmigrate agent: one per compute host, it serves guest RAM (memfs), "
    "holds pages for split instances whose main host is elsewhere, and exchanges "
    "pages with other hosts over the fabric.",
)

AGENT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "host",
        default=None,
        help="Name of this host as peers and Nova know it (the nova-compute host name). "
        "Defaults to the system host name.",
    ),
    cfg.StrOpt(
        "control_socket",
        default=paths.state_path_def("agent.sock"),
        help="Unix socket (mode 0600) on which the agent accepts local management "
        "requests.",
    ),
    cfg.IntOpt(
        "substore_mb",
        default=4096,
        min=1,
        help="Capacity (MiB) of the sub-host page store: pages this host holds for split "
        "instances whose main host is elsewhere. The placement reserves this memory.",
    ),
    cfg.StrOpt(
        "placement_policy",
        default="round_robin",
        help="Policy (entry point in the nova_ipmigrate.placement namespace) that places "
        "paged-out pages on an instance's sub-hosts: round_robin or least_loaded.",
    ),
    cfg.FloatOpt(
        "fetch_timeout",
        default=30.0,
        min=0.1,
        help="Seconds a page-in waits for an unreachable sub-host before it fails and the "
        "instance is reported broken (it is never served other data).",
    ),
    cfg.FloatOpt(
        "rpc_timeout",
        default=None,
        min=1.0,
        help="Seconds an RPC call to an agent (over [DEFAULT] transport_url) waits for "
        "the reply before it fails with MessagingTimeout. Unset: [DEFAULT] "
        "rpc_response_timeout. An op_status call that waits for the operation adds its "
        "wait to this.",
    ),
    cfg.StrOpt(
        "rpc_version_cap",
        default=None,
        help="Highest version of the agent RPC API that callers send (e.g. 1.0), for "
        "rolling upgrades: pin it to what the oldest agent understands until every agent "
        "is upgraded. Unset: the newest version the caller knows.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(agent_group)
    conf.register_opts(AGENT_OPTS, group=agent_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(agent_group, AGENT_OPTS)]
