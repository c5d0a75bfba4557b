"""The engine with a backend that schedules: claims made before an operation exists,
given back when its creation fails, settled when it ends (no Nova here: a fake
backend records what the engine asks of it)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate import exception
from nova_ipmigrate.engine.backend import RECORD, Backend
from nova_ipmigrate.engine.manager import EngineManager
from nova_ipmigrate.engine.worker import Worker
from tests.unit.engine.fakes import Direct, Engine, FakeAgents, make_notifier


class FakeBackend(Backend):
    """A scheduling backend: destinations from ``pick`` (or the one asked for), one
    fake part consumer per claim; ``raises[method]`` makes a method fail,
    ``refuse_vm[vm]`` makes ``claim_part`` of that VM fail, ``settle_errors`` are
    raised by the next settles, one each."""

    name = "fake"
    schedules = True

    def __init__(self, hosts: tuple[str, ...] = ("h1", "h2", "h3", "h4")) -> None:
        self.hosts = hosts
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.raises: dict[str, BaseException] = {}
        self.refuse_vm: dict[str, BaseException] = {}
        self.settle_errors: list[BaseException] = []
        self.release_error: BaseException | None = None
        self.settled: list[tuple[str, str]] = []
        self.released: list[dict[str, Any] | None] = []
        self.split_hosts = ["h3", "h4"]
        self.split_limit = 64 << 20
        self._ids = itertools.count(1)

    def _enter(self, method: str, **kwargs: Any) -> None:
        self.calls.append((method, kwargs))
        if method in self.raises:
            raise self.raises[method]

    def called(self, method: str) -> list[dict[str, Any]]:
        return [kw for m, kw in self.calls if m == method]

    def _record(self, op_id: str, vm: str, n: int = 1, **extra: Any) -> dict[str, Any]:
        return {"backend": "fake", "op_id": op_id, "instance": vm,
                "claims": [f"consumer-{next(self._ids)}" for _ in range(n)], **extra}

    def pick(self, source: str, main: str, holders: Any, avoid: Any) -> str:
        for h in reversed(self.hosts):
            if h not in {source, main, *holders, *avoid}:
                return h
        raise exception.InsufficientCapacity("no host left", reason="no host")

    def claim_part(self, op_id: str, vm: str, main: str, source: str, dest: str | None,
                   holders: Any, avoid: Any = ()) -> dict[str, Any]:
        self._enter("claim_part", op_id=op_id, vm=vm, main=main, source=source, dest=dest,
                    holders=list(holders), avoid=list(avoid))
        if vm in self.refuse_vm:
            raise self.refuse_vm[vm]
        chosen = dest or self.pick(source, main, holders, avoid)
        return self._record(op_id, vm, dest=chosen)

    def claim_reintegration(self, op_id: str, vm: str, main: str,
                            sources: Any) -> dict[str, Any]:
        self._enter("claim_reintegration", op_id=op_id, vm=vm, main=main,
                    sources=list(sources))
        return self._record(op_id, vm)

    def claim_split(self, op_id: str, vm: str, main: str, sub_hosts: Any,
                    resident_limit: int | None) -> dict[str, Any]:
        self._enter("claim_split", op_id=op_id, vm=vm, main=main, sub_hosts=list(sub_hosts),
                    resident_limit=resident_limit)
        hosts = list(sub_hosts) or list(self.split_hosts)
        return self._record(op_id, vm, n=len(hosts), sub_hosts=hosts,
                            resident_limit=self.split_limit if resident_limit is None
                            else resident_limit)

    def check_main_move(self, vm: str) -> None:
        self._enter("check_main_move", vm=vm)

    def settle(self, op: Any, state: str) -> None:
        self.calls.append(("settle", {"op": op.id, "state": state}))
        if self.settle_errors:
            raise self.settle_errors.pop(0)
        self.settled.append((op.id, state))

    def release(self, record: dict[str, Any] | None) -> None:
        self.calls.append(("release", {"record": record}))
        if self.release_error is not None:
            raise self.release_error
        self.released.append(record)


class BackendEngine(Engine):
    """The fakes' engine, its worker and manager on ``backend``."""

    def __init__(self, db_path: Path, agents: FakeAgents, backend: Backend,
                 reconciler: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        super().__init__(db_path, agents, notifier=make_notifier())
        self.backend = backend
        self.worker = Worker(self.db, agents, self.inventory, self.notifications,
                             poll_interval=0.01, backend=backend)
        self.manager = Direct(EngineManager(self.db, self.inventory, self.notifications,
                                            backend=backend, reconciler=reconciler))


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def eng(db_path: Path, agents: FakeAgents, backend: FakeBackend) -> Iterator[BackendEngine]:
    e = BackendEngine(db_path, agents, backend)
    yield e
    e.close()


def _nothing_created(eng: BackendEngine, agents: FakeAgents) -> None:
    assert eng.db.list() == []
    assert agents.mutating_calls() == []


# -- the local backend --------------------------------------------------------------


def test_local_backend_does_not_schedule() -> None:
    b = Backend()
    assert (b.name, b.schedules) == ("local", False)
    with pytest.raises(NotImplementedError, match="local backend does not schedule"):
        b.claim_part("op", "vm1", "h1", "h2", None, ["h2"])
    with pytest.raises(NotImplementedError):
        b.claim_reintegration("op", "vm1", "h1", ["h2"])
    with pytest.raises(NotImplementedError):
        b.claim_split("op", "vm1", "h1", [], None)
    assert b.moves_main_host is False
    b.check_main_move("vm1")            # no refusal
    b.release(None)


def test_local_backend_ops_carry_no_record(engine: Engine) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    assert RECORD not in op["params"]
    assert engine.run(op["id"])["state"] == "done"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"resident_limit": 1 << 20}, "at least one sub-host"),
    ({"sub_hosts": ["h3"]}, "needs resident_limit"),
])
def test_local_split_needs_hosts_and_limit(engine: Engine, agents: FakeAgents,
                                           kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(exception.Invalid, match=match):
        engine.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9", **kwargs)
    assert engine.db.list() == [] and agents.mutating_calls() == []


# -- partial migration -----------------------------------------------------------------


def test_partial_migration_destination_from_the_backend(eng: BackendEngine,
                                                        agents: FakeAgents,
                                                        backend: FakeBackend) -> None:
    agents.used["h4"] = 1000          # no room as the agents see it: the backend decides
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    (claim,) = backend.called("claim_part")
    assert claim == {"op_id": op["id"], "vm": "vm1", "main": "h1", "source": "h2",
                     "dest": None, "holders": ["h2", "h3"], "avoid": []}
    rec = op["params"][RECORD]
    assert rec["op_id"] == op["id"] and rec["dest"] == "h4"
    assert op["dest_host"] == "h4"
    assert op["params"]["dest_endpoint"]["name"] == "h4"
    assert op["params"]["pages"] == 200
    stored = eng.db.get(op["id"])
    assert stored is not None and stored.params[RECORD] == rec


def test_partial_migration_to_a_given_destination(eng: BackendEngine,
                                                  backend: FakeBackend) -> None:
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h3", dest_host="h2")
    (claim,) = backend.called("claim_part")
    assert claim["dest"] == "h2" and claim["source"] == "h3"
    assert op["dest_host"] == "h2" and op["params"][RECORD]["dest"] == "h2"


@pytest.mark.parametrize("exc", [
    exception.InsufficientCapacity("no room anywhere", reason="no host"),
    exception.Unavailable("the scheduler does not answer", reason="scheduler"),
    exception.Invalid("placement drifted", reason="drift"),
])
def test_refused_claim_creates_nothing(eng: BackendEngine, agents: FakeAgents,
                                       backend: FakeBackend, exc: Exception) -> None:
    backend.raises["claim_part"] = exc
    with pytest.raises(type(exc), match=exc.args[0]):
        eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    _nothing_created(eng, agents)
    assert backend.released == []       # nothing was claimed


def test_error_after_the_claim_releases_it(eng: BackendEngine, agents: FakeAgents,
                                           backend: FakeBackend) -> None:
    agents.down.add("h4")                # the chosen destination's endpoint fails
    with pytest.raises(exception.Unavailable, match="the agent on h4 does not answer"):
        eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    (claim,) = backend.called("claim_part")
    (released,) = backend.released
    assert released is not None and released["dest"] == "h4"
    assert released["op_id"] == claim["op_id"]
    _nothing_created(eng, agents)


def test_conflict_is_refused_before_claiming(eng: BackendEngine,
                                             backend: FakeBackend) -> None:
    eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    with pytest.raises(exception.Conflict):
        eng.manager.partial_migration({}, vm="vm1", source_host="h3")
    assert len(backend.called("claim_part")) == 1
    assert backend.released == []


def test_done_settles_once(eng: BackendEngine, agents: FakeAgents,
                           backend: FakeBackend) -> None:
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    final = eng.run(op["id"])
    assert final["state"] == "done" and final["fault"] is None
    assert agents.layout("vm1") == {"h1": 300, "h3": 100, "h4": 200}
    for _ in range(3):
        eng.worker.tick()
    assert backend.settled == [(op["id"], "done")]
    assert backend.released == []


def test_failed_settles_failed(eng: BackendEngine, agents: FakeAgents,
                               backend: FakeBackend) -> None:
    agents.hold = True
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    eng.worker.tick()
    agents.finish("h1", "h1-1", "failed", "h4: connection reset")
    final = eng.run(op["id"])
    assert final["state"] == "failed" and final["fault"] == "h4: connection reset"
    assert backend.settled == [(op["id"], "failed")]


def test_refused_start_settles_failed(eng: BackendEngine, agents: FakeAgents,
                                      backend: FakeBackend) -> None:
    agents.refuse["partial_migrate"] = exception.Conflict("/memfs/vm1 is busy", reason="x")
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    assert eng.run(op["id"])["state"] == "failed"
    assert backend.settled == [(op["id"], "failed")]


def test_aborted_settles_aborted(eng: BackendEngine, agents: FakeAgents,
                                 backend: FakeBackend) -> None:
    agents.hold = True
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    eng.worker.tick()
    eng.manager.abort_operation({}, op_id=op["id"])
    agents.hold = False
    assert eng.run(op["id"])["state"] == "aborted"
    assert backend.settled == [(op["id"], "aborted")]


def test_abort_while_queued_gives_the_claims_back(eng: BackendEngine,
                                                  backend: FakeBackend) -> None:
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    out = eng.manager.abort_operation({}, op_id=op["id"])
    assert out["state"] == "aborted"
    eng.worker.tick()
    assert backend.settled == [(op["id"], "aborted")] or \
        backend.released == [op["params"][RECORD]]


def test_unreachable_settle_is_retried(eng: BackendEngine, agents: FakeAgents,
                                       backend: FakeBackend) -> None:
    backend.settle_errors.append(exception.Unavailable("placement is down",
                                                       reason="placement"))
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    for _ in range(50):
        eng.worker.tick()
        if backend.called("settle"):
            break
    (first,) = backend.called("settle")
    assert first == {"op": op["id"], "state": "done"}
    cur = eng.db.get(op["id"])
    assert cur is not None and not cur.final and cur.state == "running"
    assert backend.settled == []
    final = eng.run(op["id"])
    assert final["state"] == "done" and final["fault"] is None
    assert backend.settled == [(op["id"], "done")]
    assert len(backend.called("settle")) == 2
    assert backend.released == []


def test_refused_settle_ends_the_operation_with_a_fault(eng: BackendEngine,
                                                        backend: FakeBackend) -> None:
    backend.settle_errors.append(exception.Invalid("placement holds no memory there",
                                                   reason="drift"))
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    final = eng.run(op["id"])
    assert final["state"] == "done"
    assert "the fake backend did not record it" in final["fault"]
    assert "placement holds no memory there" in final["fault"]
    assert backend.released == [op["params"][RECORD]]
    assert len(backend.called("settle")) == 1


def test_refused_settle_keeps_the_operation_fault(eng: BackendEngine, agents: FakeAgents,
                                                  backend: FakeBackend) -> None:
    agents.hold = True
    op = eng.manager.partial_migration({}, vm="vm1", source_host="h2")
    eng.worker.tick()
    agents.finish("h1", "h1-1", "failed", "h4: connection reset")
    backend.settle_errors.append(exception.Conflict("placement kept changing",
                                                    reason="x"))
    backend.release_error = exception.Unavailable("placement is down", reason="p")
    final = eng.run(op["id"])
    assert final["state"] == "failed"
    assert final["fault"].startswith("h4: connection reset; the fake backend did not "
                                     "record it: placement kept changing")
    # the release failed too: the operation ends all the same
    assert backend.called("release") and backend.released == []


# -- reintegration, split ------------------------------------------------------------


def test_reintegration_claims(eng: BackendEngine, agents: FakeAgents,
                              backend: FakeBackend) -> None:
    op = eng.manager.reintegration({}, vm="vm1")
    (claim,) = backend.called("claim_reintegration")
    assert claim == {"op_id": op["id"], "vm": "vm1", "main": "h1", "sources": ["h2", "h3"]}
    assert op["params"][RECORD]["op_id"] == op["id"]
    assert op["params"]["sources"] == ["h2", "h3"]
    assert eng.run(op["id"])["state"] == "done"
    assert agents.layout("vm1") == {"h1": 600}
    assert backend.settled == [(op["id"], "done")]


def test_refused_reintegration_claim(eng: BackendEngine, agents: FakeAgents,
                                     backend: FakeBackend) -> None:
    backend.raises["claim_reintegration"] = exception.InsufficientCapacity(
        "h1 has no room", reason="h1")
    with pytest.raises(exception.InsufficientCapacity, match="h1 has no room"):
        eng.manager.reintegration({}, vm="vm1")
    _nothing_created(eng, agents)


def test_split_chosen_by_the_backend(eng: BackendEngine, agents: FakeAgents,
                                     backend: FakeBackend) -> None:
    op = eng.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9")
    (claim,) = backend.called("claim_split")
    assert claim == {"op_id": op["id"], "vm": "vm9", "main": "h2", "sub_hosts": [],
                     "resident_limit": None}
    assert op["params"]["sub_hosts"] == ["h3", "h4"]
    assert op["params"]["resident_limit"] == 64 << 20
    assert [e["name"] for e in op["params"]["sub_host_endpoints"]] == ["h3", "h4"]
    assert op["params"][RECORD]["sub_hosts"] == ["h3", "h4"]
    assert eng.run(op["id"])["state"] == "done"
    (call,) = [c for c in agents.calls if c[0] == "split"]
    assert call[2]["resident_limit"] == 64 << 20
    assert [s["name"] for s in call[2]["sub_hosts"]] == ["h3", "h4"]
    assert backend.settled == [(op["id"], "done")]


def test_split_with_given_hosts(eng: BackendEngine, backend: FakeBackend) -> None:
    op = eng.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9",
                           sub_hosts=["h1"], resident_limit=1 << 30)
    (claim,) = backend.called("claim_split")
    assert claim["sub_hosts"] == ["h1"] and claim["resident_limit"] == 1 << 30
    assert op["params"]["sub_hosts"] == ["h1"]
    assert op["params"]["resident_limit"] == 1 << 30


def test_split_refused_by_the_agent_settles_failed(eng: BackendEngine, agents: FakeAgents,
                                                   backend: FakeBackend) -> None:
    agents.refuse["split"] = exception.NotFound("no RAM file /memfs/vm9", reason="x")
    op = eng.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9")
    final = eng.run(op["id"])
    assert final["state"] == "failed" and "refused the split" in final["fault"]
    assert backend.settled == [(op["id"], "failed")]


def test_refused_split_claim(eng: BackendEngine, agents: FakeAgents,
                             backend: FakeBackend) -> None:
    backend.raises["claim_split"] = exception.Invalid("not a split-memory flavor",
                                                      reason="flavor")
    with pytest.raises(exception.Invalid, match="not a split-memory flavor"):
        eng.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9")
    _nothing_created(eng, agents)


def test_split_of_a_split_vm_is_refused_before_claiming(eng: BackendEngine,
                                                        backend: FakeBackend) -> None:
    with pytest.raises(exception.Conflict, match="split already"):
        eng.manager.split({}, main_host="h1", path="/memfs/other", vm="vm1")
    assert backend.called("claim_split") == []


def test_split_endpoint_failure_releases(eng: BackendEngine, agents: FakeAgents,
                                         backend: FakeBackend) -> None:
    agents.down.add("h3")
    with pytest.raises(exception.Unavailable, match="h3"):
        eng.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9")
    (released,) = backend.released
    assert released is not None and released["sub_hosts"] == ["h3", "h4"]
    _nothing_created(eng, agents)


# -- host drain ----------------------------------------------------------------------


def _drain_world(agents: FakeAgents) -> None:
    agents.add_vm("vm2", "h3", {"h3": 100, "h2": 150})
    agents.add_vm("vm3", "h2", {"h2": 50, "h4": 10})      # h2 is its main host


def test_drain_scheduled(eng: BackendEngine, agents: FakeAgents,
                         backend: FakeBackend) -> None:
    _drain_world(agents)
    backend.refuse_vm["vm2"] = exception.InsufficientCapacity("no room for vm2's part",
                                                              reason="no host")
    op = eng.manager.host_drain({}, host="h2")
    eng.worker.tick()
    cur = eng.db.get(op["id"])
    assert cur is not None and cur.step == "waiting"
    claims = {kw["vm"]: kw for kw in backend.called("claim_part")}
    assert set(claims) == {"vm1", "vm2"}             # vm3: h2 is its main host
    assert claims["vm1"]["source"] == "h2" and claims["vm1"]["dest"] is None
    assert claims["vm1"]["holders"] == ["h2", "h3"] and claims["vm1"]["avoid"] == []
    (child,) = eng.db.list(parent_id=op["id"])
    rec = child.params[RECORD]
    assert child.id == rec["op_id"] == claims["vm1"]["op_id"]
    assert (child.vm, child.source_host, child.dest_host) == ("vm1", "h2", "h4")
    assert child.params["pages"] == 200
    assert child.params["dest_endpoint"]["name"] == "h4"
    assert cur.progress["unplaced"] == [{"vm": "vm2", "why": "no room for vm2's part"}]
    assert cur.progress["main_host_vms"] == ["vm3"]
    final = eng.run(op["id"])
    assert final["state"] == "failed"
    assert "vm2: part on h2 not placed: no room for vm2's part" in final["fault"]
    assert eng.state(child.id) == "done"
    assert agents.layout("vm1") == {"h1": 300, "h3": 100, "h4": 200}
    assert backend.settled == [(child.id, "done")]     # the drain itself has no record
    assert backend.released == []


def test_drain_avoids_the_excluded_hosts(eng: BackendEngine, agents: FakeAgents,
                                         backend: FakeBackend) -> None:
    op = eng.manager.host_drain({}, host="h2", exclude=["h4"])
    final = eng.run(op["id"])
    (claim,) = backend.called("claim_part")
    assert claim["avoid"] == ["h4"]
    # h1 is the main host, h3 a holder, h4 excluded: no host is left
    assert final["state"] == "failed" and "not placed: no host left" in final["fault"]
    assert eng.db.list(parent_id=op["id"]) == []


def test_drain_every_part_placed_is_done(eng: BackendEngine, agents: FakeAgents,
                                         backend: FakeBackend) -> None:
    agents.add_vm("vm2", "h3", {"h3": 100, "h2": 150})
    op = eng.manager.host_drain({}, host="h2")
    final = eng.run(op["id"])
    assert final["state"] == "done" and final["fault"] is None
    children = eng.db.list(parent_id=op["id"])
    assert sorted((c.vm, c.dest_host) for c in children) == [("vm1", "h4"), ("vm2", "h4")]
    assert sorted(backend.settled) == sorted((c.id, "done") for c in children)
    assert all(c.params[RECORD]["op_id"] == c.id for c in children)


def test_drain_transient_claim_releases_earlier_claims(eng: BackendEngine,
                                                       agents: FakeAgents,
                                                       backend: FakeBackend) -> None:
    agents.add_vm("vm2", "h3", {"h3": 100, "h2": 150})
    backend.refuse_vm["vm2"] = exception.Unavailable("the scheduler does not answer",
                                                     reason="scheduler")
    op = eng.manager.host_drain({}, host="h2")
    eng.worker.tick()
    cur = eng.db.get(op["id"])
    assert cur is not None and (cur.state, cur.step) == ("running", "planning")
    assert eng.db.list(parent_id=op["id"]) == []
    (vm1_claim,) = [kw for kw in backend.called("claim_part") if kw["vm"] == "vm1"]
    assert [r["op_id"] for r in backend.released if r] == [vm1_claim["op_id"]]
    del backend.refuse_vm["vm2"]
    assert eng.run(op["id"])["state"] == "done"
    assert len(eng.db.list(parent_id=op["id"])) == 2


def test_drain_avoids_hosts_whose_agents_do_not_answer(eng: BackendEngine,
                                                      agents: FakeAgents,
                                                      backend: FakeBackend) -> None:
    agents.add_vm("vm2", "h3", {"h3": 100, "h2": 150})
    agents.down.add("h4")
    eng.manager.host_drain({}, host="h2")
    eng.worker.tick()
    claims = backend.called("claim_part")
    assert claims and all("h4" in kw["avoid"] for kw in claims)


def test_drain_failing_to_persist_releases_every_claim(eng: BackendEngine,
                                                       agents: FakeAgents,
                                                       backend: FakeBackend) -> None:
    agents.add_vm("vm2", "h3", {"h3": 100, "h2": 150})
    agents.refuse["endpoint"] = exception.Unavailable("no endpoint", reason="test")
    op = eng.manager.host_drain({}, host="h2")
    eng.worker.tick()
    cur = eng.db.get(op["id"])
    assert cur is not None and cur.step == "planning"
    assert eng.db.list(parent_id=op["id"]) == []
    first = [kw["op_id"] for kw in backend.called("claim_part")]
    assert len(first) == 2
    assert sorted(r["op_id"] for r in backend.released if r) == sorted(first)
    del agents.refuse["endpoint"]
    assert eng.run(op["id"])["state"] == "done"
    assert {c.id for c in eng.db.list(parent_id=op["id"])}.isdisjoint(first)


def test_drain_abort_settles_queued_children(eng: BackendEngine, agents: FakeAgents,
                                             backend: FakeBackend) -> None:
    op = eng.manager.host_drain({}, host="h2")
    eng.worker.tick()
    (child,) = eng.db.list(parent_id=op["id"])
    # abort before the child is admitted (the drain's step planned it this pass)
    assert eng.state(child.id) == "queued"
    eng.manager.abort_operation({}, op_id=op["id"])
    eng.worker.step(op["id"])
    assert eng.state(op["id"]) == "aborted"
    assert backend.settled == [(child.id, "aborted")]


# -- main-host moves, reconcile ------------------------------------------------------


def test_main_host_migration_refused_by_the_backend(eng: BackendEngine, agents: FakeAgents,
                                                    backend: FakeBackend) -> None:
    backend.raises["check_main_move"] = exception.Invalid("vm1 moves through Nova",
                                                          reason="nova")
    with pytest.raises(exception.Invalid, match="vm1 moves through Nova"):
        eng.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    with pytest.raises(exception.Invalid, match="vm1 moves through Nova"):
        eng.manager.reintegration({}, vm="vm1", target_host="h4")
    assert backend.called("check_main_move") == [{"vm": "vm1"}, {"vm": "vm1"}]
    assert backend.called("claim_reintegration") == []
    _nothing_created(eng, agents)


def test_main_host_migration_accepted_by_the_backend(eng: BackendEngine,
                                                     backend: FakeBackend) -> None:
    op = eng.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    assert backend.called("check_main_move") == [{"vm": "vm1"}]
    assert RECORD not in op["params"]
    assert eng.run(op["id"])["state"] == "done"
    assert backend.called("settle") == []         # nothing claimed, nothing settled


def test_reconcile_without_a_reconciler(eng: BackendEngine) -> None:
    assert eng.manager.reconcile({}) == {"backend": "fake", "drift": [], "checked": False}


def test_reconcile_with_a_reconciler(db_path: Path, agents: FakeAgents,
                                     backend: FakeBackend) -> None:
    drift = [{"vm": "vm1", "host": "h2", "why": "pages without (enough) memory allocated"}]
    calls: list[int] = []

    def reconciler() -> list[dict[str, Any]]:
        calls.append(1)
        return drift

    e = BackendEngine(db_path, agents, backend, reconciler=reconciler)
    try:
        assert e.manager.reconcile({}) == {"backend": "fake", "drift": drift,
                                           "checked": True}
        assert calls == [1]
    finally:
        e.close()


def test_local_reconcile(engine: Engine) -> None:
    assert engine.manager.reconcile({}) == {"backend": "local", "drift": [],
                                            "checked": False}
