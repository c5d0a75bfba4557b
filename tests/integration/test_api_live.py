"""A real ``ipmigrate-api`` process (``noauth2``) in front of a real
``ipmigrate-engine`` over a private RabbitMQ, which drives four real agents (memfs
over FUSE) on loopback while a guest stand-in writes and verifies the VM's memory
(``mmap_worker.py``: it must end with 0 mismatches).

The VM is split with ``openstack server split`` (the real CLI). Then over HTTP:
the memory layout; bad requests (unknown server, non-admin caller, malformed body,
the main host or an unknown host as source, destination = source) refused with
their error and nothing changed; schemathesis's generated requests from the
OpenAPI document (``schemathesis.toml``), conformant and changing nothing; a
partial migration followed to its end; a conflicting request (409, nothing
changed); an abort; a host drain; the reintegration; a paginated list.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.agent import rpcapi
from nova_ipmigrate.lab import rabbitmq
from nova_ipmigrate.lab.cli import OpenStackCLI
from nova_ipmigrate.lab.control import APIProcess, EngineProcess
from nova_ipmigrate.lab.memfsd import AgentDaemon
from tests.integration import test_agent_rpc as _rpc
from tests.integration.conftest import QUICK, mmap_worker
from tests.integration.test_agent_rpc import RAM, SIZE, _agents, _ctxt

broker = _rpc.broker
start_agents = _rpc.start_agents
api = _rpc.api

pytestmark = pytest.mark.integration
HOSTS = ("main", "sub1", "sub2", "spare")
BIN = Path(sys.executable).parent
ADMIN = "admin:admin"


@pytest.fixture
def engine(workdir: Path, broker: rabbitmq.RabbitMQ) -> Iterator[EngineProcess]:
    e = EngineProcess(workdir / "engine", broker.transport_url, HOSTS, host="engine-api-it")
    e.sync()
    e.start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def api_service(workdir: Path, broker: rabbitmq.RabbitMQ,
                engine: EngineProcess) -> Iterator[APIProcess]:
    a = APIProcess(workdir / "api", broker.transport_url)
    try:
        a.start()
        yield a
    finally:
        a.stop()


def _ops(service: APIProcess) -> list[dict[str, Any]]:
    code, body = service.request("GET", "/v1/operations")
    assert code == 200, body
    return list(body["operations"])


def _state(api_: rpcapi.AgentAPI) -> tuple[Any, ...]:
    """What a refused request must not change: the agents' operations, and who holds
    which VM's parts (page counts change as the guest pages)."""
    return tuple((h, len(api_.ops(_ctxt(), h)["ops"]),
                  sorted((str(v["vm"]), tuple(sorted(v.get("holders") or ())))
                         for v in api_.parts(_ctxt(), h)["vms"]))
                 for h in HOSTS)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_rest_api_through_the_engine(
        start_agents: Callable[..., dict[str, AgentDaemon]], api: rpcapi.AgentAPI,
        api_service: APIProcess, workdir: Path) -> None:
    agents = _agents(start_agents, api, *HOSTS)
    main = agents["main"]
    vm = str(uuid.uuid4())
    # a normal (one-host) VM, split through the CLI once the guest stand-in runs
    main.call("create", path=RAM, size=SIZE, resident_limit=SIZE)
    action = f"/v1/servers/{vm}/action"
    cli = OpenStackCLI(api_service.url)

    def held(host: str) -> int:
        return int(api.agent_stats(_ctxt(), host)["substore"]["vms"].get(vm, 0))

    def wait_op(op_id: str) -> dict[str, Any]:
        _wait(lambda: api_service.request("GET", f"/v1/operations/{op_id}")[1]
              ["operation"]["state"] in ("done", "failed", "aborted"), 180, op_id)
        return api_service.request("GET", f"/v1/operations/{op_id}")[1]["operation"]

    with mmap_worker(main.mountpoint / RAM, SIZE, 75) as w:
        time.sleep(3)
        # -- split migration (openstack server split) ---------------------------------
        op = cli.json("server", "split", vm, "--main-host", "main", "--path", RAM,
                      "--sub-host", "sub1", "--sub-host", "sub2", "--resident-limit",
                      str(SIZE // 4), "--wait")
        assert op["state"] == "done" and op["kind"] == "split", op
        assert cli.history[-1].progress, "no progress shown"
        _wait(lambda: held("sub1") > 2000 and held("sub2") > 2000, 60,
              "pages on the sub-hosts")
        # -- the memory layout --------------------------------------------------------
        code, body = api_service.request("GET", f"/v1/servers/{vm}/memory")
        assert code == 200, body
        hosts = {h["host"]: h for h in body["memory"]["hosts"]}
        assert list(hosts)[0] == "main" and set(hosts) == {"main", "sub1", "sub2"}, body
        assert hosts["sub1"]["bytes"] > 2000 * 4096, body

        # -- bad requests: the right error, nothing changed ---------------------------
        before, ops_before = _state(api), _ops(api_service)
        for path, req, token, raw, status in [
                (f"/v1/servers/{uuid.uuid4()}/action",
                 {"partial_migration": {"source_host": "sub1"}}, ADMIN, None, 404),
                (action, {"partial_migration": {"source_host": "sub1"}}, "demo:demo", None,
                 403),
                (action, None, ADMIN, b"{nope", 400),
                (action, {"partial_migration": {"source_host": 7}}, ADMIN, None, 400),
                (action, {"partial_migration": {"source_host": "main"}}, ADMIN, None, 400),
                (action, {"partial_migration": {"source_host": "sub1", "dest_host": "sub1"}},
                 ADMIN, None, 400),
                (action, {"partial_migration": {"source_host": "nohost"}}, ADMIN, None, 400),
                ("/v1/hosts/nohost/drain", None, ADMIN, None, 400)]:
            code, body = api_service.request("POST", path, req, token=token, raw=raw)
            assert code == status, (path, req, code, body)
            assert body["errors"][0]["detail"], body
        assert _state(api) == before and _ops(api_service) == ops_before

        # -- schemathesis: generated requests from the OpenAPI document ---------------
        # (what is generated and checked: schemathesis.toml next to this file)
        st = subprocess.run(
            [str(BIN / "schemathesis"), "--config-file",
             str(Path(__file__).with_name("schemathesis.toml")), "--no-color", "run",
             f"{api_service.url}/v1/openapi.json",
             "--url", api_service.url, "-H", f"X-Auth-Token: {ADMIN}",
             "-H", "OpenStack-API-Version: memory-migration 1.1",
             "--max-examples", "10" if QUICK else "50", "--workers", "1",
             "--report-dir", str(workdir / "schemathesis")],
            capture_output=True, text=True, timeout=600, cwd=workdir,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
        print(st.stdout[-3000:])
        assert st.returncode == 0, st.stdout[-6000:] + st.stderr[-2000:]
        assert "Tested: 6" in st.stdout, st.stdout[-3000:]
        assert _state(api) == before and _ops(api_service) == ops_before

        # -- the partial migration, followed to its end -------------------------------
        code, body = api_service.request("POST", action, {"partial_migration": {
            "source_host": "sub1", "dest_host": "spare"}})
        assert code == 202, body
        op = wait_op(body["operation"]["id"])
        assert op["state"] == "done" and op["progress"]["percent"] == 100.0, op
        assert held("sub1") == 0 and held("spare") > 2000

        # -- a conflicting operation, an abort ----------------------------------------
        code, body = api_service.request("POST", action, {"partial_migration": {
            "source_host": "sub2", "dest_host": "sub1", "max_rate_mb_s": 1}})
        assert code == 202, body
        slow = body["operation"]
        n_ops = len(_ops(api_service))
        code, body = api_service.request("POST", action, {"reintegration": {}})
        assert code == 409 and body["errors"][0]["code"] == "ipmigrate.conflict", body
        assert len(_ops(api_service)) == n_ops, "the refused request left an operation"
        code, body = api_service.request("POST", f"/v1/operations/{slow['id']}/abort")
        assert code == 202, body
        final = wait_op(slow["id"])
        assert final["state"] == "aborted", final
        assert held("sub2") > 2000, "the aborted move's source still holds its part"
        code, body = api_service.request("POST", f"/v1/operations/{slow['id']}/abort")
        assert code == 409, body

        # -- drain, reintegration -----------------------------------------------------
        code, body = api_service.request("POST", "/v1/hosts/sub2/drain",
                                         {"drain": {"exclude": ["sub1"]}})
        assert code == 202, body
        assert wait_op(body["operation"]["id"])["state"] == "done"
        assert held("sub2") == 0
        code, body = api_service.request("POST", action, {"reintegration": {}})
        assert code == 202, body
        assert wait_op(body["operation"]["id"])["state"] == "done"
        code, body = api_service.request("GET", f"/v1/servers/{vm}/memory")
        assert [h["host"] for h in body["memory"]["hosts"] if h["pages"]] == ["main"], body
        out, _ = w.communicate(timeout=240)
    assert w.returncode == 0 and "mismatches 0" in out, out
    ops = _ops(api_service)
    code, page = api_service.request("GET", "/v1/operations?limit=2")
    assert code == 200 and [o["id"] for o in page["operations"]] == [o["id"] for o in ops[:2]]
    assert page["operations_links"][0]["rel"] == "next"
    assert api_service.stop() == 0
