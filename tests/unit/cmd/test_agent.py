"""ipmigrate-agent: the RPC server starts after the agent and stops before it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from nova_ipmigrate import conf as ipm_conf
from nova_ipmigrate import rpc
from nova_ipmigrate.cmd import agent as cmd_agent
from tests.unit.agent.stubs import StubAgent


class Recorder(StubAgent):
    def __init__(self, events: list[str]) -> None:
        super().__init__("h1")
        self.events = events
        self.config.memfs = mock.Mock(mountpoint="/m")
        self.config.control_socket = "/s"

    def start(self) -> None:
        self.events.append("agent.start")

    def stop(self) -> None:
        self.events.append("agent.stop")


@pytest.fixture
def fake_url() -> Iterator[None]:
    rpc.register_opts(ipm_conf.CONF)
    ipm_conf.CONF.set_override("transport_url", "fake://")
    yield
    ipm_conf.CONF.clear_override("transport_url")
    rpc.cleanup()


def test_without_a_transport_only_the_agent() -> None:
    events: list[str] = []
    service = cmd_agent.AgentService(Recorder(events), rpc_enabled=False)  # type: ignore[arg-type]
    assert "rpc off" in service.start()
    service.stop()
    service.stop()
    assert events == ["agent.start", "agent.stop"] and not rpc.initialized()


def test_rpc_server_between_agent_start_and_stop(fake_url: None) -> None:
    events: list[str] = []
    service = cmd_agent.AgentService(Recorder(events), rpc_enabled=True)  # type: ignore[arg-type]
    real = rpc.get_server

    def get_server(target: Any, endpoints: Any, transport: Any = None) -> Any:
        server = real(target, endpoints, transport)
        for name in ("start", "stop", "wait"):
            method = getattr(server, name)
            setattr(server, name, lambda m=method, n=name: (events.append(f"rpc.{n}"), m())[1])
        events.append(f"server {target.server} {target.topic}")
        return server

    with mock.patch.object(rpc, "get_server", get_server):
        assert "rpc on" in service.start()
        assert rpc.initialized()
        service.stop()
    assert events == ["agent.start", "server h1 ipmigrate-agent", "rpc.start", "rpc.stop",
                      "rpc.wait", "agent.stop"]
    assert not rpc.initialized()


def test_a_failing_rpc_start_stops_the_agent(fake_url: None) -> None:
    events: list[str] = []
    service = cmd_agent.AgentService(Recorder(events), rpc_enabled=True)  # type: ignore[arg-type]
    with mock.patch.object(rpc, "get_server", side_effect=OSError(111, "refused")), \
            pytest.raises(OSError):
        service.start()
    assert events == ["agent.start", "agent.stop"] and not rpc.initialized()
