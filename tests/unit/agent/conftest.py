"""Agent RPC over the ``fake://`` transport: a private conf, real RPC servers on threads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from oslo_config import cfg

from nova_ipmigrate import rpc
from nova_ipmigrate.agent import rpcapi
from nova_ipmigrate.agent.manager import AgentManager
from nova_ipmigrate.conf import agent as agent_conf


# One transport and its servers per module: stopping a server on the fake transport
# takes a second (its poll timeout).
@pytest.fixture(scope="module")
def rpc_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    agent_conf.register_opts(conf)
    rpc.register_opts(conf)
    conf([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    conf.set_override("transport_url", "fake://")
    return conf


@pytest.fixture(scope="module")
def transport(rpc_conf: cfg.ConfigOpts) -> Iterator[Any]:
    t = rpc.get_rpc_transport(rpc_conf)
    yield t
    t.cleanup()


@pytest.fixture(scope="module")
def serve(transport: Any) -> Iterator[Callable[[Any, str], Any]]:
    """``serve(agent, host)``: an RPC server of ``AgentManager(agent)`` as ``host``."""
    servers: list[Any] = []

    def start(agent: Any, host: str) -> Any:
        server = rpc.get_server(rpcapi.server_target(host), [AgentManager(agent)],
                                transport=transport)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.wait()


@pytest.fixture
def api(rpc_conf: cfg.ConfigOpts, transport: Any) -> rpcapi.AgentAPI:
    return rpcapi.AgentAPI(rpc_conf, transport=transport, timeout=10)
