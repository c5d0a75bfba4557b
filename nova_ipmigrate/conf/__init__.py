"""Configuration of nova-ipmigrate: one module per option group.

Importing this package registers every group on the global ``CONF``; code reads
options as ``nova_ipmigrate.conf.CONF.memfs.mountpoint``.
"""

from oslo_config import cfg

from nova_ipmigrate.conf import (
    agent,
    engine,
    fabric,
    guest,
    lab,
    libvirt,
    memfs,
    migration,
    paths,
)

CONF = cfg.CONF

paths.register_opts(CONF)
memfs.register_opts(CONF)
guest.register_opts(CONF)
fabric.register_opts(CONF)
lab.register_opts(CONF)
agent.register_opts(CONF)
migration.register_opts(CONF)
engine.register_opts(CONF)
libvirt.register_opts(CONF)
