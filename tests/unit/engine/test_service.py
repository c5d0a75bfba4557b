"""The engine as a whole over the fake:// transport: EngineAPI -> RPC server (threading
executor) -> manager -> worker thread -> fake agents; stopped and restarted mid-move."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oslo_config import cfg

from nova_ipmigrate import exception, rpc
from nova_ipmigrate.engine.db import Database, NotSynced
from nova_ipmigrate.engine.rpcapi import EngineAPI
from nova_ipmigrate.engine.service import EngineService
from tests.unit.engine.fakes import FakeAgents, make_conf, make_notifier, notifications


@pytest.fixture
def transport() -> Iterator[Any]:
    conf = cfg.ConfigOpts()
    rpc.register_opts(conf)
    conf([], project="nova-ipmigrate", default_config_files=[], default_config_dirs=[])
    t = rpc.get_rpc_transport(conf, url="fake://")
    yield t
    t.cleanup()


def _service(tmp_path: Path, transport: Any, agents: FakeAgents) -> EngineService:
    conf = make_conf()
    conf.set_override("connection", f"sqlite:///{tmp_path}/engine.sqlite", group="database")
    svc = EngineService(conf, transport, agents, notifier=make_notifier())
    svc.db.sync()
    svc.start()
    return svc


def _wait(api: EngineAPI, op_id: str, states: tuple[str, ...],
          timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        op = api.show_operation({}, op_id)
        if op["state"] in states:
            return op
        assert time.monotonic() < deadline, f"operation stuck: {op}"
        time.sleep(0.02)


def test_partial_migration_over_rpc(tmp_path: Path, transport: Any,
                                    agents: FakeAgents) -> None:
    svc = _service(tmp_path, transport, agents)
    api = EngineAPI(transport, timeout=10)
    try:
        op = api.partial_migration({}, "vm1", "h2", dest_host="h4")
        assert op["state"] == "queued"
        final = _wait(api, op["id"], ("done", "failed", "aborted"))
        assert final["state"] == "done"
        assert [o["id"] for o in api.list_operations({}, vm="vm1")] == [op["id"]]
        assert api.list_operations({}, state="running") == []
        with pytest.raises(exception.NotFound):
            api.show_operation({}, "nope")
        with pytest.raises(exception.Invalid, match="must differ"):
            api.partial_migration({}, "vm1", "h3", dest_host="h3")
        with pytest.raises(exception.Conflict):
            api.abort_operation({}, op["id"])
        assert {n[0] for n in notifications()} >= {"ipmigrate.operation.start",
                                                   "ipmigrate.operation.end"}
    finally:
        svc.stop()


def test_stop_and_restart_mid_move(tmp_path: Path, transport: Any,
                                   agents: FakeAgents) -> None:
    agents.hold = True
    svc = _service(tmp_path, transport, agents)
    api = EngineAPI(transport, timeout=10)
    op = api.reintegration({}, "vm1")
    _wait(api, op["id"], ("running",))
    deadline = time.monotonic() + 10
    while not agents.agent_ops["h1"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    svc.stop()
    agents.hold = False
    svc = _service(tmp_path, transport, agents)
    try:
        final = _wait(api, op["id"], ("done", "failed", "aborted"))
        assert final["state"] == "done"
        assert len(agents.agent_ops["h1"]) == 1
        assert agents.layout("vm1") == {"h1": 600}
        with pytest.raises(exception.Invalid, match="main host"):
            api.partial_migration({}, "vm1", "h1")
    finally:
        svc.stop()


def test_abort_over_rpc(tmp_path: Path, transport: Any, agents: FakeAgents) -> None:
    agents.hold = True
    svc = _service(tmp_path, transport, agents)
    api = EngineAPI(transport, timeout=10)
    try:
        op = api.partial_migration({}, "vm1", "h2")
        _wait(api, op["id"], ("running",))
        deadline = time.monotonic() + 10
        while not svc.db.get(op["id"]).agent_op_id:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert api.abort_operation({}, op["id"])["state"] == "aborting"
        assert _wait(api, op["id"], ("aborted", "failed", "done"))["state"] == "aborted"
    finally:
        svc.stop()


def test_unsynced_database_refuses_to_start(tmp_path: Path, agents: FakeAgents) -> None:
    conf = make_conf()
    conf.set_override("connection", f"sqlite:///{tmp_path}/x.sqlite", group="database")
    svc = EngineService(conf, None, agents)
    with pytest.raises(NotSynced):
        svc.start()
    svc.db.close()


def test_default_connection_follows_state_path(tmp_path: Path) -> None:
    conf = make_conf()
    conf.set_override("state_path", str(tmp_path))
    assert conf.database.connection == f"sqlite:///{tmp_path}/engine.sqlite"
    db = Database(conf.database.connection, conf.database)
    db.sync()
    assert (tmp_path / "engine.sqlite").exists()
    db.close()


def test_client_helpers(tmp_path: Path, transport: Any, agents: FakeAgents) -> None:
    from nova_ipmigrate.engine import client
    svc = _service(tmp_path, transport, agents)
    api = EngineAPI(transport, timeout=10)
    try:
        seen: list[str] = []
        op = client.partial_migration(api, "vm1", "h2", max_rate_mb_s=10)
        final = client.wait(api, op["id"], timeout=20, interval=0.02,
                            on_progress=lambda o: seen.append(o["state"]))
        assert final["state"] == "done" and seen[-1] == "done"
        assert "partial_migration vm1 h2 -> h3 done" in client.describe(final)
        drain = client.wait(api, client.host_drain(api, "h3")["id"], timeout=20,
                            interval=0.02)
        assert drain["state"] == "done", drain["fault"]
        assert client.wait(api, client.reintegration(api, "vm1")["id"], timeout=20,
                           interval=0.02)["state"] == "done"
        assert agents.layout("vm1") == {"h1": 600}
    finally:
        svc.stop()
