"""``ipmigrate-agent``: the per-host daemon (memfs, sub-host store, fabric endpoint).

SIGTERM/SIGINT or the control socket's ``shutdown`` stop it cleanly.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

from oslo_config import cfg
from oslo_log import log as logging

from nova_ipmigrate import conf
from nova_ipmigrate.agent.service import Agent, AgentConfig
from nova_ipmigrate.cmd.daemon import serve
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.errors import FabricError
from nova_ipmigrate.memfs.server import MemfsConfig

CONF = conf.CONF


def build_config() -> AgentConfig:
    return AgentConfig(
        host_name=CONF.agent.host or socket.gethostname(),
        memfs=MemfsConfig.from_conf(CONF.memfs),
        control_socket=Path(CONF.agent.control_socket),
        key=auth.SharedKey.from_file(CONF.fabric.key_file),
        fabric_address=CONF.fabric.listen_address, fabric_port=CONF.fabric.port,
        tls=auth.TlsConfig.from_conf(CONF.fabric), substore_mb=CONF.agent.substore_mb,
        placement_policy=CONF.agent.placement_policy, fetch_timeout=CONF.agent.fetch_timeout,
        streams=CONF.fabric.streams, advertise_address=CONF.migration.advertise_address,
        copy_timeout=CONF.migration.copy_timeout)


def main(argv: list[str] | None = None) -> int:
    logging.register_options(CONF)
    try:
        CONF(sys.argv[1:] if argv is None else argv, project="nova-ipmigrate")
        logging.setup(CONF, "nova-ipmigrate")
        config = build_config()
    except (cfg.Error, OSError, ValueError, FabricError) as exc:
        print(f"ipmigrate-agent: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    agent = Agent(config, on_shutdown=done.set)

    def start() -> str:
        agent.start()
        return (f"agent {config.host_name} ready (memfs {config.memfs.mountpoint}, fabric "
                f"port {agent.fabric.port}, control {config.control_socket})")

    return serve("ipmigrate-agent", start, agent.stop, done)

if __name__ == "__main__":
    sys.exit(main())
