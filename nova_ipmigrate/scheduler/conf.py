"""Options of the ``[ipmigrate_scheduler]`` group: nova-scheduler's side of nova-ipmigrate.

They live in nova-scheduler's own configuration (``nova.conf``): importing
:mod:`nova_ipmigrate.scheduler.filters` or :mod:`nova_ipmigrate.scheduler.weighers`
registers them on ``nova.conf.CONF``. This module imports no Nova, so that
:func:`list_opts` serves the config generator anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from oslo_config import cfg

GROUP_NAME = "ipmigrate_scheduler"

scheduler_group = cfg.OptGroup(
    name=GROUP_NAME,
    title="nova-ipmigrate scheduler options",
    help="nova-scheduler plug-ins of nova-ipmigrate: SplitMemoryFilter (keeps Nova's own "
    "moves away from split-memory instances and checks the engine's part requests) and "
    "SplitMemoryWeigher (orders the hosts of the engine's part requests).",
)

SCHEDULER_OPTS: list[cfg.Opt] = [
    cfg.BoolOpt(
        "refuse_nova_moves",
        default=True,
        help="SplitMemoryFilter gives no host to Nova's own moves of a split-memory "
        "instance (live and cold migration, resize, evacuation, unshelve of a "
        "shelved-offloaded instance): Nova would move the whole flavor to one host and "
        "drop, or leave behind, the parts of the instance's memory that its sub-hosts hold "
        "in placement. Set to false only to let such a move through on purpose (for "
        "example to evacuate an instance whose main host is lost), and repair its "
        "allocations afterwards.",
    ),
    cfg.FloatOpt(
        "weight_multiplier",
        default=1.0,
        help="Multiplier of SplitMemoryWeigher, which weighs the hosts of nova-ipmigrate's "
        "own part requests only (every other request gets 0 from it). A host's weight "
        "grows with its free memory and, for a reintegration or a main-host move, with "
        "whether it already holds parts of the instance. Negative values invert the "
        "preference. Aggregate metadata ``ipmigrate_weight_multiplier`` overrides it per "
        "host, as for Nova's own weighers.",
    ),
    cfg.FloatOpt(
        "holder_weight",
        default=2.0,
        min=0.0,
        help="How much SplitMemoryWeigher prefers, for a reintegration or a main-host "
        "move, a host that already holds parts of the instance (less memory to move). "
        "The free-memory term lies between 0 and 1, so a value above 1 puts every such "
        "host before every other; 0 ignores the holders.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(scheduler_group)
    conf.register_opts(SCHEDULER_OPTS, group=scheduler_group)


def list_opts() -> list[tuple[str | cfg.OptGroup, Sequence[cfg.Opt]]]:
    return [(scheduler_group, SCHEDULER_OPTS)]
