"""The agent's RPC endpoint, called through a real RPC server on the fake transport."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import oslo_messaging as messaging
import pytest

from nova_ipmigrate import exception
from nova_ipmigrate.agent import rpcapi
from nova_ipmigrate.agent.manager import AgentManager
from nova_ipmigrate.agent.service import Agent, AgentConfig
from nova_ipmigrate.memfs.control import ControlError
from nova_ipmigrate.memfs.server import MemfsConfig
from nova_ipmigrate.memfs.tree import FsError
from tests.unit.agent.stubs import StubAgent
from tests.unit.fabric.helpers import KEY

DEST = {"name": "h3", "address": "192.0.2.3", "port": 47800}
SUBS = [{"name": "h2", "address": "192.0.2.2", "port": 47800}]
VM = str(uuid.UUID(int=7))

Serve = Callable[[Any, str], Any]


@pytest.fixture(scope="module")
def stub_server(serve: Serve) -> StubAgent:
    agent = StubAgent("h1")
    serve(agent, "h1")
    return agent


@pytest.fixture
def stub(stub_server: StubAgent) -> StubAgent:
    stub_server.calls.clear()
    stub_server.replies.clear()
    return stub_server


def _call(api: rpcapi.AgentAPI, method: str, **kwargs: Any) -> Any:
    return api.client.prepare(server="h1").call({}, method, **kwargs)


@pytest.mark.parametrize(("method", "kwargs", "request_"), [
    ("parts", {}, {"op": "parts"}),
    ("agent_stats", {}, {"op": "agent_stats"}),
    ("ops", {}, {"op": "ops"}),
    ("page_map", {"path": "vm/pc.ram"}, {"op": "page_map", "path": "vm/pc.ram"}),
    ("op_status", {"id": "h1-1"}, {"op": "op_status", "id": "h1-1", "wait": 0}),
    ("op_status", {"id": "h1-1", "wait": 2.5},
     {"op": "op_status", "id": "h1-1", "wait": 2.5}),
    ("op_abort", {"id": "h1-1"}, {"op": "op_abort", "id": "h1-1"}),
    ("set_remote", {"path": "p", "vm": VM, "sub_hosts": SUBS},
     {"op": "set_remote", "path": "p", "vm": VM, "sub_hosts": SUBS}),
    ("split", {"path": "p", "resident_limit": 8192, "sub_hosts": SUBS},
     {"op": "split", "path": "p", "resident_limit": 8192, "sub_hosts": SUBS}),
    ("split", {"path": "p", "resident_limit": 8192, "sub_hosts": SUBS, "vm": VM},
     {"op": "split", "path": "p", "resident_limit": 8192, "sub_hosts": SUBS, "vm": VM}),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": DEST},
     {"op": "partial_migrate", "path": "p", "source": "h2", "dest": DEST,
      "strategy": "ipmigrate"}),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": DEST, "strategy": "precopy",
                         "max_rate_mb_s": 4, "request_id": "req-1"},
     {"op": "partial_migrate", "path": "p", "source": "h2", "dest": DEST,
      "strategy": "precopy", "max_rate_mb_s": 4, "request_id": "req-1"}),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": DEST, "max_rate_mb_s": None,
                         "request_id": None},
     {"op": "partial_migrate", "path": "p", "source": "h2", "dest": DEST,
      "strategy": "ipmigrate"}),
    ("reintegrate", {"path": "p"}, {"op": "reintegrate", "path": "p",
                                    "strategy": "ipmigrate"}),
    ("reintegrate", {"path": "p", "target": "h1", "request_id": "r"},
     {"op": "reintegrate", "path": "p", "target": "h1", "strategy": "ipmigrate",
      "request_id": "r"}),
    ("main_prepare_source", {"vm": VM, "dest": DEST},
     {"op": "main_prepare_source", "vm": VM, "dest": DEST}),
    ("main_prepare_source", {"vm": VM, "dest": DEST, "path": "p"},
     {"op": "main_prepare_source", "vm": VM, "dest": DEST, "path": "p"}),
    ("main_finish_source", {"vm": VM, "ok": True},
     {"op": "main_finish_source", "vm": VM, "ok": True}),
    ("main_finish_source", {"vm": VM, "ok": False},
     {"op": "main_finish_source", "vm": VM, "ok": False}),
])
def test_each_method_runs_the_agents_handler(stub: StubAgent, api: rpcapi.AgentAPI,
                                             method: str, kwargs: dict[str, Any],
                                             request_: dict[str, Any]) -> None:
    reply = _call(api, method, **kwargs)
    assert reply == {"ok": True, "host": "h1", "op": request_["op"]}
    assert stub.calls == [request_]


def test_endpoint_and_stats_need_no_handler(stub: StubAgent, api: rpcapi.AgentAPI) -> None:
    assert _call(api, "endpoint") == {"name": "h1", "address": "192.0.2.7", "port": 47801}
    assert _call(api, "stats") == {"ok": True, "stats": {"files": {}}}
    assert stub.calls == []


@pytest.mark.parametrize(("errno_", "cls"), [
    (errno.EINVAL, exception.Invalid),
    (errno.ENOENT, exception.NotFound),
    (errno.EBUSY, exception.Conflict),
    (errno.ENOSPC, exception.InsufficientCapacity),
    (errno.EHOSTUNREACH, exception.Unavailable),
    (errno.EOPNOTSUPP, exception.Invalid),
    (errno.EIO, exception.Unavailable),
    (errno.EPERM, exception.IPMigrateException),
])
def test_refusals_come_back_as_exception_classes(stub: StubAgent, api: rpcapi.AgentAPI,
                                                 errno_: int,
                                                 cls: type[exception.IPMigrateException],
                                                 ) -> None:
    def refuse(req: dict[str, Any]) -> dict[str, Any]:
        raise ControlError("refused: because", errno_)

    stub.replies["op_abort"] = refuse
    with pytest.raises(cls) as info:
        _call(api, "op_abort", id="h1-1")
    assert type(info.value) is cls
    assert info.value.format_message() == "refused: because"
    assert info.value.errno == errno_ and info.value.kwargs["code"] == cls.code


def test_fs_errors_too(stub: StubAgent, api: rpcapi.AgentAPI) -> None:
    def missing(req: dict[str, Any]) -> dict[str, Any]:
        raise FsError(errno.ENOENT, "no RAM file 'x' on memfs")

    stub.replies["page_map"] = missing
    with pytest.raises(exception.NotFound, match="no RAM file"):
        _call(api, "page_map", path="x")


@pytest.mark.parametrize(("method", "kwargs", "words"), [
    ("page_map", {"path": 3}, "'path' must be a string, not int"),
    ("page_map", {}, "missing a required argument: 'path'"),
    ("parts", {"path": "p"}, "unexpected keyword argument 'path'"),
    ("op_status", {"id": None}, "'id' must be a string, not NoneType"),
    ("op_status", {"id": "x", "wait": "5"}, "'wait' must be a number"),
    ("op_status", {"id": "x", "wait": True}, "'wait' must be a number, not bool"),
    ("set_remote", {"path": "p", "vm": VM, "sub_hosts": {"name": "h2"}},
     "'sub_hosts' must be a list"),
    ("split", {"path": "p", "resident_limit": 8192.0, "sub_hosts": SUBS},
     "'resident_limit' must be an integer"),
    ("split", {"path": "p", "resident_limit": True, "sub_hosts": SUBS},
     "'resident_limit' must be an integer, not bool"),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": "h3"},
     "'dest' must be an object"),
    ("partial_migrate", {"path": "p", "source": ["h2"], "dest": DEST},
     "'source' must be a string"),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": DEST, "max_rate_mb_s": "4"},
     "'max_rate_mb_s' must be a number or null"),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": DEST, "strategy": None},
     "'strategy' must be a string, not NoneType"),
    ("partial_migrate", {"path": "p", "source": "h2", "dest": DEST, "request_id": 1},
     "'request_id' must be a string or null"),
    ("reintegrate", {"path": "p", "target": 1}, "'target' must be a string or null"),
    ("main_prepare_source", {"vm": VM, "dest": "h3"}, "'dest' must be an object"),
    ("main_prepare_source", {"dest": DEST}, "missing a required argument: 'vm'"),
    ("main_prepare_source", {"vm": VM, "dest": DEST, "path": 1},
     "'path' must be a string or null"),
    ("main_finish_source", {"vm": VM, "ok": 1}, "'ok' must be a boolean, not int"),
    ("main_finish_source", {"vm": VM}, "missing a required argument: 'ok'"),
])
def test_malformed_arguments_are_invalid_and_change_nothing(
        stub: StubAgent, api: rpcapi.AgentAPI, method: str, kwargs: dict[str, Any],
        words: str) -> None:
    with pytest.raises(exception.Invalid, match=words) as info:
        _call(api, method, **kwargs)
    assert info.value.kwargs["code"] == 400
    assert stub.calls == []


def test_private_methods_are_not_callable(stub: StubAgent, api: rpcapi.AgentAPI) -> None:
    with pytest.raises(messaging.NoSuchMethod):
        _call(api, "_handle", op="parts", req={})
    assert stub.calls == []


def test_a_newer_version_than_the_agent_serves_is_refused(stub: StubAgent,
                                                          api: rpcapi.AgentAPI) -> None:
    with pytest.raises(messaging.UnsupportedVersion):
        api.client.prepare(server="h1", version="1.3").call({}, "parts")
    assert stub.calls == []
    assert api.client.prepare(server="h1", version="1.0").call({}, "parts")["ok"]


def test_called_directly_refusals_are_expected_exceptions() -> None:
    manager = AgentManager(StubAgent())
    with pytest.raises(messaging.ExpectedException) as info:
        manager.page_map({}, path=3)
    assert isinstance(info.value.exc_info[1], exception.Invalid)
    assert manager.parts({})["ok"]
    assert manager.parts.__name__ == "parts" and "target" in AgentManager.__dict__


# -- against the handlers of a real (not started) Agent ------------------------------------


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, serve: Serve) -> Iterator[Agent]:
    tmp_path = tmp_path_factory.mktemp("agent")
    a = Agent(AgentConfig("real", MemfsConfig(mountpoint=tmp_path / "m", page_store_mb=8,
                                            watchdog=False),
                          tmp_path / "agent.sock", KEY, fabric_address="127.0.0.1",
                          fabric_port=0, substore_mb=8, advertise_address="127.0.0.9"))
    a.memfs.create_ram_file("vm/pc.ram", 2**20, 0)
    serve(a, "real")
    yield a
    a.stop()


def test_real_agent_handlers(agent: Agent, api: rpcapi.AgentAPI) -> None:
    assert api.parts({}, "real") == {"ok": True, "host": "real", "vms": []}
    assert api.ops({}, "real") == {"ok": True, "ops": []}
    assert api.agent_stats({}, "real")["host"] == "real"
    assert api.page_map({}, "real", "vm/pc.ram")["map"] == "." * 256
    assert api.endpoint({}, "real") == {"name": "real", "address": "127.0.0.9",
                                      "port": agent.fabric.port}
    assert "vm/pc.ram" in api.stats({}, "real")["stats"]["files"]


def test_real_agent_refusals(agent: Agent, api: rpcapi.AgentAPI) -> None:
    with pytest.raises(exception.NotFound, match="no RAM file 'nope'"):
        api.partial_migrate({}, "real", "nope", "h2", DEST)
    with pytest.raises(exception.NotFound, match="no operation 'real-9'"):
        api.op_status({}, "real", "real-9")
    with pytest.raises(exception.Invalid, match="relative path"):
        api.page_map({}, "real", "../x")
    with pytest.raises(exception.Invalid, match="'dest' needs"):
        api.partial_migrate({}, "real", "vm/pc.ram", "h2", {"name": "h3", "address": "a",
                                                          "port": 0})
    with pytest.raises(exception.Invalid, match="instance UUID"):
        api.set_remote({}, "real", "vm/pc.ram", "not-a-uuid", SUBS)
    with pytest.raises(exception.Invalid, match="only the main host"):
        api.reintegrate({}, "real", "vm/pc.ram", target="h2")
    assert api.ops({}, "real")["ops"] == []
    assert agent.memfs.find("vm/pc.ram").remote is None


def test_real_agent_source_side_of_a_main_host_move(agent: Agent,
                                                    api: rpcapi.AgentAPI) -> None:
    with pytest.raises(exception.NotFound, match="no domain of"):
        api.main_prepare_source({}, "real", VM, DEST)
    with pytest.raises(exception.Invalid, match="not a split VM"):
        api.main_prepare_source({}, "real", VM, DEST, path="vm/pc.ram")
    with pytest.raises(exception.NotFound, match="no main-host move"):
        api.main_finish_source({}, "real", VM, True)
    assert api.main_finish_source({}, "real", VM, False) == {
        "ok": True, "vm": VM, "rolled_back": False}
    assert api.ops({}, "real")["ops"] == []
