"""Options of the [migration] group: moving parts of split-memory instances."""

from __future__ import annotations

from oslo_config import cfg

migration_group = cfg.OptGroup(
    name="migration",
    title="migration options",
    help="Partial migration and reintegration of split-memory instances, as the main "
    "host's agent runs them.",
)

MIGRATION_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "advertise_address",
        default=None,
        help="Address other hosts use to reach this host's fabric server, when it is the "
        "destination of a part (reintegration). Defaults to [fabric] listen_address, or "
        "the address of the host name when that is a wildcard.",
    ),
    cfg.FloatOpt(
        "copy_timeout",
        default=120.0,
        min=1.0,
        help="Seconds one region copy (up to 4096 pages, 16 MiB) from a source sub-host to "
        "the destination may take before the move fails and rolls back. At 1 Gbit/s a "
        "region takes about 0.15 s.",
    ),
    cfg.IntOpt(
        "regions_in_flight",
        default=2,
        min=1,
        max=16,
        help="Region copies of one part move in flight at once. Two keep the link busy "
        "across region boundaries; more only add memory (16 MiB per region at the "
        "source).",
    ),
    cfg.StrOpt(
        "default_strategy",
        default="ipmigrate",
        help="Transfer strategy of a partial migration or reintegration whose request "
        "names none: the name of a plugin in the nova_ipmigrate.transfer_strategy "
        "entry-point namespace. Built-in: 'ipmigrate' (each part straight from its "
        "holder to the destination, in parallel) and 'naive' (the baselines, through "
        "the main host; for comparison only).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(migration_group)
    conf.register_opts(MIGRATION_OPTS, group=migration_group)


def list_opts() -> list[tuple[cfg.OptGroup, list[cfg.Opt]]]:
    return [(migration_group, MIGRATION_OPTS)]
