"""Options of the [engine] group (the control-plane engine) and its [database]."""

from __future__ import annotations

import copy

from oslo_config import cfg
from oslo_db import options as db_options

engine_group = cfg.OptGroup(
    name="engine",
    title="engine options",
    help="ipmigrate-engine: the control plane that validates, queues, runs and "
    "recovers operations on split-memory instances (split, partial migration, "
    "reintegration, host drain) through the hosts' agents.",
)

ENGINE_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "host",
        default=None,
        help="Name of this engine (its RPC server name and the host part of its "
        "notifications' publisher id). Defaults to the system host name.",
    ),
    cfg.ListOpt(
        "hosts",
        default=[],
        help="Compute hosts whose agents the engine knows: it asks each of them for the "
        "split instances they are the main host of, and chooses destinations among them.",
    ),
    cfg.IntOpt(
        "max_ops_per_host",
        default=2,
        min=1,
        help="Part moves that may run at once touching one host, as source or "
        "destination. Further operations stay queued (first in, first out).",
    ),
    cfg.IntOpt(
        "max_ops_per_link",
        default=1,
        min=1,
        help="Part moves that may run at once from one source host to one destination "
        "host. Further operations stay queued (first in, first out).",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=1.0,
        min=0.01,
        help="Seconds between two looks of the engine at its operations: admission of "
        "queued ones, progress of running ones from their agents.",
    ),
    cfg.FloatOpt(
        "progress_interval",
        default=10.0,
        min=0.0,
        help="Seconds between two ipmigrate.operation.progress notifications of one "
        "operation (0: one per poll).",
    ),
    cfg.IntOpt(
        "workers",
        default=4,
        min=1,
        help="Threads that run the steps of operations (agent calls) in parallel.",
    ),
    cfg.IntOpt(
        "cleanup_timeout",
        default=300,
        min=1,
        help="Seconds a failed main-host migration keeps asking the destination's agent "
        "to forget the incoming VM (it refuses while the incoming QEMU still runs, and "
        "cannot answer while it is down). Past them the operation ends anyway, saying "
        "the destination was not cleaned up; the VM runs on its main host either way.",
    ),
]

NOVA_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "backend",
        default="local",
        choices=[("local", "the agents alone: destinations from their free room, no "
                  "accounting (the lab)"),
                 ("nova", "Nova: destinations from Nova's scheduler, every part "
                  "accounted in placement, drains on Nova's maintenance notifications")],
        help="What the engine works with besides the agents.",
    ),
    cfg.ListOpt(
        "nova_config_files",
        default=["/etc/nova/nova.conf"],
        help="With backend = nova: Nova's configuration the engine reads to reach Nova's "
        "scheduler (its transport_url), API database (request specs, host mappings) "
        "and placement ([placement] credentials).",
    ),
    cfg.ListOpt(
        "maintenance_reasons",
        default=["maintenance"],
        help="With backend = nova: a nova-compute service disabled with a reason that "
        "starts with one of these (case-insensitive) has every split-instance part "
        "drained from its host. Empty: no automatic drains.",
    ),
    cfg.IntOpt(
        "reconcile_interval",
        default=600,
        min=0,
        help="With backend = nova: seconds between two comparisons of the agents' "
        "layouts with placement's allocations; a mismatch is logged as a warning "
        "(nothing is changed). 0: only on request (the reconcile RPC call).",
    ),
]

#: the engine's database when [database] connection is not set
DEFAULT_CONNECTION = "sqlite:///$state_path/engine.sqlite"


def _database_opts() -> list[cfg.Opt]:
    """oslo.db's [database] options, ``connection`` defaulting to the engine's SQLite file."""
    opts: list[cfg.Opt] = copy.deepcopy(db_options.database_opts)
    for opt in opts:
        if opt.name == "connection":
            opt.default = DEFAULT_CONNECTION
    return opts


DATABASE_OPTS = _database_opts()


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(engine_group)
    conf.register_opts(ENGINE_OPTS + NOVA_OPTS, group=engine_group)
    conf.register_opts(DATABASE_OPTS, group="database")


def list_opts() -> list[tuple[str | cfg.OptGroup, list[cfg.Opt]]]:
    return [(engine_group, ENGINE_OPTS + NOVA_OPTS), ("database", DATABASE_OPTS)]
