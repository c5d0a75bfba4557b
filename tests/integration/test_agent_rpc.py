"""The agent RPC API over a real (private) RabbitMQ, between real agents on loopback.

One broker for the module (:class:`nova_ipmigrate.lab.rabbitmq.RabbitMQ`), and
``ipmigrate-agent`` daemons whose config has ``[DEFAULT] transport_url``: calls
by host name, errors as the same exception classes, a partial migration started
and followed over RPC while a host process writes the VM's memory, and a broker
restart between two calls that the clients and the agents' servers both survive.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import oslo_messaging as messaging
import pytest
from oslo_context import context as oslo_context

from nova_ipmigrate import exception, rpc
from nova_ipmigrate.agent import rpcapi
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.lab import control, rabbitmq
from nova_ipmigrate.lab.memfsd import AgentDaemon
from tests.integration.conftest import mmap_worker
from tests.integration.test_agent_remote_paging import _free_port

pytestmark = pytest.mark.integration
MIB = 2**20
RAM = "vm/pc.ram"
SIZE = 48 * MIB
#: reconnecting after a broker restart: retry quickly, at most every 2 s
RABBIT_OPTS = control.RABBIT_OPTS


class RpcAgentDaemon(AgentDaemon):
    """An agent whose RPC client side reconnects quickly (the lab's defaults otherwise)."""

    def sections(self) -> dict[str, dict[str, Any]]:
        return {**super().sections(), "oslo_messaging_rabbit": RABBIT_OPTS}


@pytest.fixture(scope="module")
def broker() -> Iterator[rabbitmq.RabbitMQ]:
    if not Path(rabbitmq.SERVER).exists():
        pytest.skip("rabbitmq-server is not installed (bindep.txt)")
    workdir = Path(tempfile.mkdtemp(prefix="ipm-mq-"))
    mq = rabbitmq.RabbitMQ(workdir)
    try:
        mq.start()
        print(f"RabbitMQ {mq.nodename} up in {mq.start_seconds:.1f}s", file=sys.stderr)
        yield mq
    finally:
        mq.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def start_agents(workdir: Path, broker: rabbitmq.RabbitMQ,
                 ) -> Iterator[Callable[..., dict[str, AgentDaemon]]]:
    key = workdir / "fabric.key"
    auth.generate_key_file(key)
    started: dict[str, AgentDaemon] = {}

    def start(*names: str) -> dict[str, AgentDaemon]:
        for name in names:
            d = RpcAgentDaemon(workdir / name, name, key, _free_port(),
                               memfs={"reader_threads": 3, "page_store_mb": 256},
                               agent={"fetch_timeout": 3},
                               defaults={"transport_url": broker.transport_url})
            started[name] = d
            d.start()
        return started

    try:
        yield start
    finally:
        for d in started.values():
            d.stop()


@pytest.fixture(scope="module")
def api(broker: rabbitmq.RabbitMQ) -> Iterator[rpcapi.AgentAPI]:
    conf = control.client_conf()      # reconnects quickly, like RABBIT_OPTS
    transport = rpc.get_rpc_transport(conf, url=broker.transport_url)
    try:
        yield rpcapi.AgentAPI(conf, transport=transport, timeout=30)
    finally:
        # bounded: with the broker gone (a failed test) the driver would retry forever
        control.bounded(transport.cleanup)


def _ctxt() -> oslo_context.RequestContext:
    return oslo_context.RequestContext(request_id=f"req-{uuid.uuid4()}")


def _wait_rpc(api: rpcapi.AgentAPI, host: str, timeout: float = 60.0) -> float:
    """Seconds until ``host`` answers (its RPC server may still be connecting)."""
    t0 = time.monotonic()
    while True:
        try:
            api.parts(_ctxt(), host)
            return time.monotonic() - t0
        except messaging.MessagingException as exc:  # a timeout, or no broker yet
            assert time.monotonic() - t0 < timeout, f"{host} does not answer over RPC: {exc}"
            time.sleep(0.2)


def _agents(start: Callable[..., dict[str, AgentDaemon]], api: rpcapi.AgentAPI,
            *names: str) -> dict[str, AgentDaemon]:
    agents = start(*names)
    quick = rpcapi.AgentAPI(api.client.conf, transport=api.client.transport, timeout=3)
    for name in names:
        _wait_rpc(quick, name)
    return agents


def test_calls_by_host(start_agents: Callable[..., dict[str, AgentDaemon]],
                       api: rpcapi.AgentAPI) -> None:
    agents = _agents(start_agents, api, "alpha", "beta")
    for name, d in agents.items():
        assert api.parts(_ctxt(), name) == {"ok": True, "host": name, "vms": []}
        st = api.agent_stats(_ctxt(), name)
        local = d.call("agent_stats")
        assert st["host"] == name and st["substore"] == local["substore"]
        assert set(st) == set(local) == {"ok", "host", "substore", "fabric", "memfs"}
        assert api.endpoint(_ctxt(), name) == d.sub_host_entry()
        assert api.ops(_ctxt(), name) == {"ok": True, "ops": []}
    agents["beta"].call("create", path=RAM, size=MIB, resident_limit=0)
    assert RAM in api.stats(_ctxt(), "beta")["stats"]["files"]
    assert RAM not in api.stats(_ctxt(), "alpha")["stats"]["files"]
    assert api.page_map(_ctxt(), "beta", RAM)["map"] == "." * 256


def test_errors_come_back_as_exception_classes(
        start_agents: Callable[..., dict[str, AgentDaemon]], api: rpcapi.AgentAPI) -> None:
    agents = _agents(start_agents, api, "alpha", "beta")
    alpha = agents["alpha"]
    alpha.call("create", path=RAM, size=MIB, resident_limit=0)
    dest = api.endpoint(_ctxt(), "beta")
    with pytest.raises(exception.NotFound, match="no RAM file 'nope'") as nf:
        api.page_map(_ctxt(), "alpha", "nope")
    assert nf.value.kwargs["code"] == 404 and nf.value.errno == 2
    with pytest.raises(exception.NotFound, match="no operation"):
        api.op_status(_ctxt(), "alpha", "alpha-99")
    with pytest.raises(exception.NotFound):
        api.partial_migrate(_ctxt(), "alpha", "nope", "beta", dest)
    with pytest.raises(exception.Invalid, match="'dest' must be an object"):
        api.partial_migrate(_ctxt(), "alpha", RAM, "beta", "beta")  # type: ignore[arg-type]
    with pytest.raises(exception.Invalid, match="unexpected keyword argument 'force'"):
        api.client.prepare(server="alpha").call(_ctxt(), "op_abort", id="x", force=True)
    with pytest.raises(exception.Invalid, match="relative path"):
        api.page_map(_ctxt(), "alpha", "/../etc")
    with pytest.raises(exception.Invalid, match="instance UUID"):
        api.set_remote(_ctxt(), "alpha", RAM, "nope", [dest])
    with pytest.raises(exception.Invalid, match="only the main host"):
        api.reintegrate(_ctxt(), "alpha", RAM, target="beta")
    with pytest.raises(messaging.MessagingTimeout):
        rpcapi.AgentAPI(api.client.conf, transport=api.client.transport,
                        timeout=2).parts(_ctxt(), "nobody")
    # nothing changed
    assert api.ops(_ctxt(), "alpha")["ops"] == []
    assert api.parts(_ctxt(), "alpha")["vms"] == []


def test_partial_migration_over_rpc(start_agents: Callable[..., dict[str, AgentDaemon]],
                                    api: rpcapi.AgentAPI) -> None:
    agents = _agents(start_agents, api, "main", "sub1", "sub2", "spare")
    main, s1, s2 = agents["main"], agents["sub1"], agents["sub2"]
    vm = uuid.uuid4()
    main.call("create", path=RAM, size=SIZE, resident_limit=SIZE // 4)
    main.call("set_remote", path=RAM, vm=str(vm),
              sub_hosts=[s1.sub_host_entry(), s2.sub_host_entry()])

    def held(host: str) -> int:
        return int(api.agent_stats(_ctxt(), host)["substore"]["vms"].get(str(vm), 0))

    with mmap_worker(main.mountpoint / RAM, SIZE, 25) as w:
        deadline = time.monotonic() + 60
        while not (held("sub1") > 2000 and held("sub2") > 2000):
            assert time.monotonic() < deadline, "no pages on the sub-hosts"
            time.sleep(0.2)
        parts = api.parts(_ctxt(), "main")["vms"]
        assert [p["holders"] for p in parts] == [["sub1", "sub2"]]
        before = held("sub1")
        op = api.partial_migrate(_ctxt(), "main", RAM, "sub1", api.endpoint(_ctxt(), "spare"),
                                 request_id="req-rpc-move")
        assert op["ok"] and op["state"] == "running" and op["id"].startswith("main-")
        deadline = time.monotonic() + 120
        while op["state"] == "running":
            assert time.monotonic() < deadline, f"the move did not end: {op}"
            op = api.op_status(_ctxt(), "main", op["id"], wait=2)
        assert op["state"] == "done", op
        assert op["progress"]["switched"] > 0.5 * before, op
        assert [o["id"] for o in api.ops(_ctxt(), "main")["ops"]] == [op["id"]]
        vms = api.parts(_ctxt(), "main")["vms"]
        assert sorted(vms[0]["holders"]) == ["spare", "sub2"], vms
        assert held("sub1") == 0
        out, _ = w.communicate(timeout=240)
        # Once the guest stand-in stopped paging, the directory and the holders agree
        # (stale copies are dropped asynchronously).
        deadline = time.monotonic() + 15
        while True:
            by_host = api.parts(_ctxt(), "main")["vms"][0]["pages_by_host"]
            if all(held(h) == by_host.get(h, 0) for h in ("sub1", "sub2", "spare")):
                break
            assert time.monotonic() < deadline, by_host
            time.sleep(0.2)
    assert w.returncode == 0 and "mismatches 0" in out, out
    f = api.stats(_ctxt(), "main")["stats"]["files"][RAM]
    assert f["lost"] == 0 and not f["broken"], f


def test_a_broker_restart_between_two_calls(
        start_agents: Callable[..., dict[str, AgentDaemon]], api: rpcapi.AgentAPI,
        broker: rabbitmq.RabbitMQ) -> None:
    agents = _agents(start_agents, api, "alpha", "beta")
    assert api.parts(_ctxt(), "alpha")["host"] == "alpha"
    t0 = time.monotonic()
    broker.restart()
    restarted = time.monotonic() - t0
    # the same client, the same agent processes: each answers again within a bound
    quick = rpcapi.AgentAPI(api.client.conf, transport=api.client.transport, timeout=5)
    took = {name: _wait_rpc(quick, name, timeout=60) for name in agents}
    print(f"broker restart {restarted:.1f}s, then answers after {took}", file=sys.stderr)
    assert api.endpoint(_ctxt(), "beta") == agents["beta"].sub_host_entry()
    assert all(d.alive() for d in agents.values())
    # a hard restart (SIGKILL, no goodbye to the clients) too
    broker.restart(hard=True)
    took = {name: _wait_rpc(quick, name, timeout=90) for name in agents}
    print(f"after a hard broker restart: answers after {took}", file=sys.stderr)
    assert api.ops(_ctxt(), "alpha") == {"ok": True, "ops": []}
