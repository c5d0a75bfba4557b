"""``ipmigrate-agent``: the per-host daemon (memfs, sub-host store, fabric endpoint).

With ``[DEFAULT] transport_url`` set it also serves the agent RPC API
(:mod:`nova_ipmigrate.agent.rpcapi`) once the agent is up; without it, only the
local control socket. SIGTERM/SIGINT or the control socket's ``shutdown`` stop
it cleanly (the RPC server first, then the agent).
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging

from nova_ipmigrate import conf, rpc
from nova_ipmigrate.agent import rpcapi
from nova_ipmigrate.agent.mainmove import LibvirtConfig
from nova_ipmigrate.agent.manager import AgentManager
from nova_ipmigrate.agent.service import Agent, AgentConfig
from nova_ipmigrate.cmd.daemon import serve
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.errors import FabricError
from nova_ipmigrate.memfs import victim
from nova_ipmigrate.memfs.server import MemfsConfig
from nova_ipmigrate.migration import strategy

CONF = conf.CONF
LOG = logging.getLogger(__name__)


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
        copy_timeout=CONF.migration.copy_timeout,
        regions_in_flight=CONF.migration.regions_in_flight,
        default_strategy=CONF.migration.default_strategy,
        libvirt=LibvirtConfig(
            connection_uri=CONF.libvirt.connection_uri, peer_uri=CONF.libvirt.peer_uri,
            migrate_uri=CONF.libvirt.migrate_uri,
            migration_timeout=float(CONF.libvirt.migration_timeout),
            directory_timeout=CONF.libvirt.directory_timeout, virsh=CONF.libvirt.virsh))


def check_plugins() -> None:
    """Load the configured plugins now: an unknown name fails at start (ValueError)."""
    victim.load(CONF.memfs.victim_policy)
    strategy.load(CONF.migration.default_strategy)


class AgentService:
    """The agent and, with a transport configured, its RPC server."""

    def __init__(self, agent: Agent, rpc_enabled: bool) -> None:
        self.agent = agent
        self.rpc_enabled = rpc_enabled
        self.server: Any = None
        self._stopped = False

    def start(self) -> str:
        config = self.agent.config
        self.agent.start()
        try:
            if self.rpc_enabled:
                rpc.init(CONF)
                self.server = rpc.get_server(rpcapi.server_target(config.host_name),
                                             [AgentManager(self.agent)])
                self.server.start()
                LOG.info("agent RPC API %s on topic %s, server %s", rpcapi.RPC_API_VERSION,
                         rpcapi.TOPIC, config.host_name)
            else:
                LOG.info("no [DEFAULT] transport_url: no RPC server, control socket only")
        except BaseException:
            self.stop()
            raise
        return (f"agent {config.host_name} ready (memfs {config.memfs.mountpoint}, fabric "
                f"port {self.agent.fabric.port}, control {config.control_socket}, "
                f"rpc {'on' if self.rpc_enabled else 'off'})")

    def stop(self) -> None:
        """RPC server (stop, wait for the calls in progress), transports, then the agent."""
        if self._stopped:
            return
        self._stopped = True
        server, self.server = self.server, None
        try:
            if server is not None:
                try:
                    server.stop()
                    server.wait()
                except Exception:
                    LOG.exception("stopping the RPC server failed")
            rpc.cleanup()
        finally:
            self.agent.stop()


def main(argv: list[str] | None = None) -> int:
    logging.register_options(CONF)
    rpc.register_opts(CONF)
    try:
        CONF(sys.argv[1:] if argv is None else argv, project="nova-ipmigrate")
        logging.setup(CONF, "nova-ipmigrate")
        config = build_config()
        check_plugins()
    except (cfg.Error, OSError, ValueError, FabricError) as exc:
        print(f"ipmigrate-agent: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    service = AgentService(Agent(config, on_shutdown=done.set),
                           rpc.transport_configured(CONF))
    return serve("ipmigrate-agent", service.start, service.stop, done)


if __name__ == "__main__":
    sys.exit(main())
