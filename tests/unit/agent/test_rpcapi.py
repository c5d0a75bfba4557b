"""The client side of the agent RPC API: what each method sends, timeouts, version cap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import oslo_messaging as messaging
import pytest
from oslo_config import cfg
from oslo_context import context as oslo_context

from nova_ipmigrate import rpc
from nova_ipmigrate.agent import rpcapi
from tests.unit.agent.stubs import StubAgent

DEST = {"name": "h3", "address": "192.0.2.3", "port": 47800}
SUBS = [{"name": "h2", "address": "192.0.2.2", "port": 47800}]


@pytest.fixture
def client_api(rpc_conf: cfg.ConfigOpts, transport: Any) -> rpcapi.AgentAPI:
    """An AgentAPI whose RPC client is a mock: what it would send."""
    api = rpcapi.AgentAPI(rpc_conf, transport=transport, timeout=30)
    api.client = mock.MagicMock(spec=api.client)
    api.client.prepare.return_value.call.return_value = {"ok": True}
    return api


@pytest.mark.parametrize(("method", "args", "kwargs", "sent"), [
    ("stats", (), {}, {}),
    ("agent_stats", (), {}, {}),
    ("parts", (), {}, {}),
    ("endpoint", (), {}, {}),
    ("ops", (), {}, {}),
    ("page_map", ("vm/pc.ram",), {}, {"path": "vm/pc.ram"}),
    ("op_abort", ("h1-3",), {}, {"id": "h1-3"}),
    ("set_remote", ("p", "vm-uuid", SUBS), {},
     {"path": "p", "vm": "vm-uuid", "sub_hosts": SUBS}),
    ("split", ("p", 8192, SUBS), {"vm": "u"},
     {"path": "p", "resident_limit": 8192, "sub_hosts": SUBS, "vm": "u"}),
    ("partial_migrate", ("p", "h2", DEST), {"max_rate_mb_s": 4},
     {"path": "p", "source": "h2", "dest": DEST, "strategy": "ipmigrate",
      "max_rate_mb_s": 4, "request_id": None}),
    ("reintegrate", ("p",), {"request_id": "r"},
     {"path": "p", "target": None, "strategy": "ipmigrate", "request_id": "r"}),
])
def test_each_method_calls_its_host(client_api: rpcapi.AgentAPI, method: str,
                                    args: tuple[Any, ...], kwargs: dict[str, Any],
                                    sent: dict[str, Any]) -> None:
    ctxt = oslo_context.RequestContext()
    assert getattr(client_api, method)(ctxt, "h7", *args, **kwargs) == {"ok": True}
    prepare: Any = client_api.client.prepare
    prepare.assert_called_once_with(server="h7", version="1.0", timeout=30.0)
    prepare.return_value.call.assert_called_once_with(ctxt, method, **sent)


@pytest.mark.parametrize(("method", "args", "kwargs", "sent"), [
    ("main_prepare_source", ("vm-uuid", DEST), {},
     {"vm": "vm-uuid", "dest": DEST, "path": None}),
    ("main_prepare_source", ("vm-uuid", DEST), {"path": "p"},
     {"vm": "vm-uuid", "dest": DEST, "path": "p"}),
    ("main_finish_source", ("vm-uuid", True), {}, {"vm": "vm-uuid", "ok": True}),
    ("main_finish_source", ("vm-uuid",), {"ok": False}, {"vm": "vm-uuid", "ok": False}),
])
def test_main_source_methods_are_sent_at_1_2(client_api: rpcapi.AgentAPI, method: str,
                                             args: tuple[Any, ...], kwargs: dict[str, Any],
                                             sent: dict[str, Any]) -> None:
    assert getattr(client_api, method)({}, "h7", *args, **kwargs) == {"ok": True}
    prepare: Any = client_api.client.prepare
    prepare.assert_called_once_with(server="h7", version="1.2", timeout=30.0)
    prepare.return_value.call.assert_called_once_with({}, method, **sent)


def test_main_source_methods_need_1_2(rpc_conf: cfg.ConfigOpts, transport: Any) -> None:
    old = rpcapi.AgentAPI(rpc_conf, transport=transport, version_cap="1.1")
    with pytest.raises(messaging.RPCVersionCapError):
        old.main_prepare_source({}, "h1", "vm-uuid", DEST)
    with pytest.raises(messaging.RPCVersionCapError):
        old.main_finish_source({}, "h1", "vm-uuid", False)


def test_main_source_methods_reach_the_agent(serve: Callable[[Any, str], Any],
                                             api: rpcapi.AgentAPI) -> None:
    agent = StubAgent("rc")
    serve(agent, "rc")
    assert api.main_prepare_source({}, "rc", "u", DEST)["op"] == "main_prepare_source"
    assert api.main_finish_source({}, "rc", "u", ok=True)["op"] == "main_finish_source"
    assert agent.calls == [{"op": "main_prepare_source", "vm": "u", "dest": DEST},
                           {"op": "main_finish_source", "vm": "u", "ok": True}]


def test_op_status_waits_longer(client_api: rpcapi.AgentAPI) -> None:
    client_api.op_status({}, "h7", "h7-1")
    client_api.op_status({}, "h7", "h7-1", wait=5)
    client_api.op_status({}, "h7", "h7-1", wait=600)
    prepare: Any = client_api.client.prepare
    assert [c.kwargs["timeout"] for c in prepare.call_args_list] == [30.0, 35.0, 90.0]
    assert prepare.return_value.call.call_args.kwargs == {"id": "h7-1", "wait": 600}


def test_timeout_from_the_options(rpc_conf: cfg.ConfigOpts, transport: Any) -> None:
    assert rpcapi.AgentAPI(rpc_conf, transport=transport).timeout == 60.0  # oslo's default
    rpc_conf.set_override("rpc_response_timeout", 12)
    assert rpcapi.AgentAPI(rpc_conf, transport=transport).timeout == 12.0
    rpc_conf.set_override("rpc_timeout", 7, group="agent")
    try:
        api = rpcapi.AgentAPI(rpc_conf, transport=transport)
        assert api.timeout == 7.0 and api.client.timeout == 7.0
    finally:
        rpc_conf.clear_override("rpc_timeout", group="agent")
        rpc_conf.clear_override("rpc_response_timeout")


def test_version_cap(rpc_conf: cfg.ConfigOpts, transport: Any) -> None:
    api = rpcapi.AgentAPI(rpc_conf, transport=transport)
    assert api.client.version_cap is None and api.client.can_send_version("1.0")
    rpc_conf.set_override("rpc_version_cap", "1.0", group="agent")
    try:
        api = rpcapi.AgentAPI(rpc_conf, transport=transport)
    finally:
        rpc_conf.clear_override("rpc_version_cap", group="agent")
    assert api.client.version_cap == "1.0"
    assert api.client.can_send_version("1.0") and not api.client.can_send_version("1.1")
    old = rpcapi.AgentAPI(rpc_conf, transport=transport, version_cap="0.9")
    with pytest.raises(messaging.RPCVersionCapError):
        old.parts({}, "h1")


def test_the_target(api: rpcapi.AgentAPI) -> None:
    target = api.client.target
    assert (target.topic, target.exchange, target.version) == (
        "ipmigrate-agent", "ipmigrate", rpcapi.RPC_API_VERSION)
    server = rpcapi.server_target("h1")
    assert (server.topic, server.exchange, server.server) == ("ipmigrate-agent",
                                                              "ipmigrate", "h1")


def test_calls_go_to_the_named_host_with_the_context(
        serve: Callable[[Any, str], Any], api: rpcapi.AgentAPI, rpc_conf: cfg.ConfigOpts,
        transport: Any) -> None:
    agents = {h: StubAgent(h) for h in ("ra", "rb")}
    seen: list[Any] = []
    for agent in agents.values():
        serve(agent, agent.config.host_name)
        agent.replies["parts"] = lambda req, a=agent: {"host": a.config.host_name}
    real_handle = agents["rb"].control.extra["ops"]

    def ops(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return real_handle(req)

    agents["rb"].control.extra["ops"] = ops
    assert api.parts({}, "ra") == {"host": "ra"}
    assert api.parts({}, "rb") == {"host": "rb"}
    assert api.endpoint({}, "rb")["name"] == "rb"
    assert api.ops(oslo_context.RequestContext(request_id="req-x"), "rb")["ok"]
    assert len(seen) == 1 and agents["ra"].calls == [{"op": "parts"}]
    with pytest.raises(messaging.MessagingTimeout):
        rpcapi.AgentAPI(rpc_conf, transport=transport, timeout=1).parts({}, "nobody")


def test_context_serializer_round_trip() -> None:
    ser = rpc.RequestContextSerializer(rpc.JsonPayloadSerializer())
    ctxt = oslo_context.RequestContext(request_id="req-1", user_id="u", project_id="p")
    back = ser.deserialize_context(ser.serialize_context(ctxt))
    assert isinstance(back, oslo_context.RequestContext)
    assert (back.request_id, back.user_id, back.project_id) == ("req-1", "u", "p")
    assert ser.serialize_context({"request_id": "r"}) == {"request_id": "r"}
    assert ser.serialize_context(None) == {}
    assert ser.serialize_entity({}, {"a": (1, 2)}) == {"a": [1, 2]}


def test_client_and_endpoint_agree() -> None:
    from nova_ipmigrate.agent.manager import AgentManager

    assert AgentManager.target.version == rpcapi.RPC_API_VERSION
    client = {n for n in vars(rpcapi.AgentAPI) if not n.startswith("_")} - {"VERSION_ALIASES"}
    server = {n for n in vars(AgentManager) if not n.startswith("_")} - {"target"}
    assert client == server
    for name in ("create", "set_limit", "shutdown"):
        assert name not in server, "memfs management stays on the control socket"
