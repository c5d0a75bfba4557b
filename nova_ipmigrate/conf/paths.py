"""Options of the [DEFAULT] group: where the agent keeps its state on a host."""

from __future__ import annotations

import os

from oslo_config import cfg

PATH_OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "state_path",
        default="/var/lib/nova-ipmigrate",
        help="Directory where the nova-ipmigrate agent keeps its sockets, caches and "
        "logs. Other path options default to locations below it.",
    ),
]


def state_path_def(*parts: str) -> str:
    """Return a default for a path option that lies below ``$state_path``."""
    return os.path.join("$state_path", *parts)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(PATH_OPTS)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [("DEFAULT", PATH_OPTS)]
