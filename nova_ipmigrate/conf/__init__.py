"""Configuration of nova-ipmigrate: one module per option group.

Importing this package registers every group on ``CONF``; code reads options as
``nova_ipmigrate.conf.CONF.memfs.mountpoint``. ``CONF`` is nova-ipmigrate's own
``ConfigOpts``, not oslo.config's global one: that one is Nova's (its
``state_path``, ``[libvirt]`` and ``[database]`` differ from ours), and the
plug-in's Nova side (driver, scheduler plug-ins, the engine's Nova backend) runs
in processes that load both.
"""

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

CONF = cfg.ConfigOpts()

paths.register_opts(CONF)
memfs.register_opts(CONF)
guest.register_opts(CONF)
fabric.register_opts(CONF)
lab.register_opts(CONF)
agent.register_opts(CONF)
migration.register_opts(CONF)
engine.register_opts(CONF)
libvirt.register_opts(CONF)
api.register_opts(CONF)
