"""ipmigrate-engine as a real process over a real (private) RabbitMQ, driving four
real agents on loopback while a host process writes and verifies the VM's memory.

A partial migration requested through the engine completes; a second one, kept
slow by its bandwidth cap, survives ``kill -9`` of the engine mid-move: the
restarted engine re-attaches to the agent's operation (the same one: the agent
kept running it) and the operation completes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.agent import rpcapi
from nova_ipmigrate.engine.rpcapi import EngineAPI
from nova_ipmigrate.lab import rabbitmq
from nova_ipmigrate.lab.control import EngineProcess
from nova_ipmigrate.lab.memfsd import AgentDaemon
from tests.integration import test_agent_rpc as _rpc
from tests.integration.conftest import mmap_worker
from tests.integration.test_agent_rpc import RAM, SIZE, _agents, _ctxt

# The broker, agents and AgentAPI fixtures of the agent RPC tests.
broker = _rpc.broker
start_agents = _rpc.start_agents
api = _rpc.api

pytestmark = pytest.mark.integration
HOSTS = ("main", "sub1", "sub2", "spare")
FINAL = ("done", "failed", "aborted")


@pytest.fixture
def engine(workdir: Path, broker: rabbitmq.RabbitMQ) -> Iterator[EngineProcess]:
    e = EngineProcess(workdir / "engine", broker.transport_url, HOSTS, host="engine-it")
    e.sync()
    e.start()
    try:
        yield e
    finally:
        e.stop()


def _wait_op(eapi: EngineAPI, op_id: str, cond: Callable[[dict[str, Any]], bool],
             timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        op = eapi.show_operation(_ctxt(), op_id)
        if cond(op):
            return op
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {op}"
        time.sleep(0.3)


def test_partial_migration_through_the_engine_survives_kill_9(
        start_agents: Callable[..., dict[str, AgentDaemon]], api: rpcapi.AgentAPI,
        engine: EngineProcess) -> None:
    agents = _agents(start_agents, api, *HOSTS)
    main, s1, s2 = agents["main"], agents["sub1"], agents["sub2"]
    vm = str(uuid.uuid4())
    main.call("create", path=RAM, size=SIZE, resident_limit=SIZE // 4)
    main.call("set_remote", path=RAM, vm=vm,
              sub_hosts=[s1.sub_host_entry(), s2.sub_host_entry()])
    eapi = EngineAPI(api.client.transport, timeout=30)

    def held(host: str) -> int:
        return int(api.agent_stats(_ctxt(), host)["substore"]["vms"].get(vm, 0))

    with mmap_worker(main.mountpoint / RAM, SIZE, 60) as w:
        deadline = time.monotonic() + 60
        while not (held("sub1") > 2000 and held("sub2") > 2000):
            assert time.monotonic() < deadline, "no pages on the sub-hosts"
            time.sleep(0.2)
        # 1. sub1's part, destination chosen by the engine: sub2, which already holds a
        #    part of the VM, is preferred over the empty spare.
        op = eapi.partial_migration(_ctxt(), vm, "sub1")
        assert op["state"] == "queued" and op["dest_host"] == "sub2", op
        op = _wait_op(eapi, op["id"], lambda o: o["state"] in FINAL, 120, "the first move")
        assert op["state"] == "done", (op, engine.tail())
        assert held("sub1") == 0
        # 2. sub2's part to spare, slowly; the engine is killed mid-move and restarted.
        op = eapi.partial_migration(_ctxt(), vm, "sub2", dest_host="spare", max_rate_mb_s=4)
        op = _wait_op(eapi, op["id"], lambda o: bool(o["agent_op_id"])
                      and o["progress"].get("bytes_done", 0) > 0, 60, "the copy to start")
        agent_op = op["agent_op_id"]
        engine.kill()
        time.sleep(1)
        assert api.op_status(_ctxt(), "main", agent_op)["state"] == "running"
        engine.start()
        op = _wait_op(eapi, op["id"], lambda o: o["state"] in FINAL, 180, "the second move")
        assert op["state"] == "done", (op, engine.tail())
        assert op["agent_op_id"] == agent_op
        agent_ops = api.ops(_ctxt(), "main")["ops"]
        assert [o["request_id"] for o in agent_ops].count(op["id"]) == 1
        assert held("sub2") == 0
        assert sorted(api.parts(_ctxt(), "main")["vms"][0]["holders"]) == ["spare"]
        out, _ = w.communicate(timeout=240)
    assert w.returncode == 0 and "mismatches 0" in out, out
    assert engine.stop() == 0
