"""All options of nova-ipmigrate, for oslo-config-generator.

Registered as the ``nova-ipmigrate`` entry point of the ``oslo.config.opts`` namespace.
A new option module must be added to ``_MODULES``; the unit tests check that none is
missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from oslo_config import cfg

from nova_ipmigrate.conf import (
    agent,
    api,
    engine,
    fabric,
    guest,
    lab,
    libvirt,
    memfs,
    migration,
    paths,
)

_MODULES = (paths, memfs, guest, lab, fabric, agent, migration, engine, libvirt, api)


def list_opts() -> list[tuple[str | cfg.OptGroup, Sequence[cfg.Opt]]]:
    opts: list[tuple[str | cfg.OptGroup, Sequence[cfg.Opt]]] = []
    for module in _MODULES:
        opts.extend(module.list_opts())
    return opts
