"""The worker's state machines, with a fake AgentAPI and a real SQLite file."""

from __future__ import annotations

import pytest

from nova_ipmigrate import exception
from tests.unit.engine.fakes import Engine, FakeAgents, notifications


def _events(op_id: str) -> list[str]:
    return [ev.rsplit(".", 1)[1] for ev, _prio, payload, _pub in notifications()
            if payload["ipmigrate_object.data"]["id"] == op_id]


def test_partial_migration_done(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4",
                                          max_rate_mb_s=5)
    engine.worker.tick()
    cur = engine.db.get(op["id"])
    assert cur is not None and (cur.state, cur.step) == ("running", "running")
    (call,) = [c for c in agents.calls if c[0] == "partial_migrate"]
    assert call[1] == "h1"
    assert call[2]["request_id"] == op["id"] and call[2]["max_rate_mb_s"] == 5
    assert call[2]["dest"] == {"name": "h4", "address": "127.0.0.1", "port": 47803}
    final = engine.run(op["id"])
    assert final["state"] == "done" and final["fault"] is None
    assert final["agent_op_id"] == "h1-1"
    assert final["progress"]["pages_done"] == 200
    assert final["started_at"] and final["finished_at"]
    assert agents.layout("vm1") == {"h1": 300, "h3": 100, "h4": 200}
    events = _events(op["id"])
    assert events[0] == "start" and events[-1] == "end"
    assert "progress" in events


def test_partial_migration_failed_by_the_agent(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4")
    engine.worker.tick()
    agents.finish("h1", "h1-1", "failed", "h4: connection reset")
    final = engine.run(op["id"])
    assert final["state"] == "failed" and final["fault"] == "h4: connection reset"
    assert agents.layout("vm1") == {"h1": 300, "h2": 200, "h3": 100}
    assert _events(op["id"])[-1] == "error"
    (err,) = [n for n in notifications() if n[0] == "ipmigrate.operation.error"]
    assert err[1] == "ERROR"


def test_agent_refuses_to_start(engine: Engine, agents: FakeAgents) -> None:
    agents.refuse["partial_migrate"] = exception.Conflict("/memfs/vm1 is busy", reason="x")
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    final = engine.run(op["id"])
    assert final["state"] == "failed"
    assert "refused to start: /memfs/vm1 is busy" in final["fault"]


def test_unreachable_agent_is_retried(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    agents.down.add("h1")
    for _ in range(3):
        engine.worker.tick()
    cur = engine.db.get(op["id"])
    assert cur is not None and (cur.state, cur.step) == ("running", "starting")
    agents.down.clear()
    assert engine.run(op["id"])["state"] == "done"
    # The repeated starts all carried the same request id: one agent operation.
    assert len(agents.agent_ops["h1"]) == 1


def test_abort_running(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.tick()
    out = engine.manager.abort_operation({}, op_id=op["id"])
    assert out["state"] == "aborting"
    assert engine.manager.abort_operation({}, op_id=op["id"])["state"] == "aborting"
    final = engine.run(op["id"])
    assert final["state"] == "aborted" and final["fault"] == "aborted by request"
    assert [c[0] for c in agents.calls].count("op_abort") == 1
    assert agents.layout("vm1") == {"h1": 300, "h2": 200, "h3": 100}
    assert _events(op["id"])[-1] == "abort"
    try:
        engine.manager.abort_operation({}, op_id=op["id"])
    except exception.Conflict as exc:
        assert "aborted: nothing to abort" in str(exc)
    else:
        raise AssertionError("abort of an ended operation accepted")


def test_abort_queued_never_reaches_the_agent(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    out = engine.manager.abort_operation({}, op_id=op["id"])
    assert out["state"] == "aborted" and out["fault"] == "aborted while queued"
    engine.worker.tick()
    assert agents.mutating_calls() == []
    assert _events(op["id"]) == ["abort"]


def test_abort_that_comes_too_late(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4")
    engine.worker.tick()
    agents.finish("h1", "h1-1", "done")
    engine.manager.abort_operation({}, op_id=op["id"])
    final = engine.run(op["id"])
    assert final["state"] == "done"
    assert final["fault"] == "the part move ended before the abort took effect"


def test_reintegration(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.reintegration({}, vm="vm1")
    assert op["params"]["sources"] == ["h2", "h3"] and op["dest_host"] == "h1"
    final = engine.run(op["id"])
    assert final["state"] == "done"
    assert agents.layout("vm1") == {"h1": 600}
    (call,) = [c for c in agents.calls if c[0] == "reintegrate"]
    assert call[2]["request_id"] == op["id"]


def test_split(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9",
                              sub_hosts=["h3", "h4"], resident_limit=2**20)
    final = engine.run(op["id"])
    assert final["state"] == "done"
    (call,) = [c for c in agents.calls if c[0] == "split"]
    assert [s["name"] for s in call[2]["sub_hosts"]] == ["h3", "h4"]
    assert call[2]["resident_limit"] == 2**20
    assert "vm9" in agents.vms


def test_split_refused_by_the_agent(engine: Engine, agents: FakeAgents) -> None:
    agents.refuse["split"] = exception.NotFound("no RAM file /memfs/vm9", reason="x")
    op = engine.manager.split({}, main_host="h2", path="/memfs/vm9", vm="vm9",
                              sub_hosts=["h3"], resident_limit=0)
    final = engine.run(op["id"])
    assert final["state"] == "failed" and "no RAM file" in final["fault"]


def test_split_abort_only_while_queued(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.split({}, main_host="h2", path="/p", vm="vm9", sub_hosts=["h3"],
                              resident_limit=0)
    engine.worker.admit()
    try:
        engine.manager.abort_operation({}, op_id=op["id"])
    except exception.Conflict as exc:
        assert "cannot be aborted" in str(exc)
    else:
        raise AssertionError("abort of a running split accepted")


def test_host_drain(engine: Engine, agents: FakeAgents) -> None:
    agents.add_vm("vm2", "h3", {"h3": 50, "h2": 400, "h4": 10})
    agents.add_vm("vm3", "h2", {"h2": 70, "h1": 20})      # h2 is its main host
    op = engine.manager.host_drain({}, host="h2", exclude=["h4"])
    final = engine.run(op["id"], ticks=200)
    assert final["state"] == "done", final["fault"]
    children = engine.db.list(parent_id=op["id"])
    assert sorted((c.vm, c.source_host, c.dest_host, c.state) for c in children) == [
        ("vm1", "h2", "h3", "done"), ("vm2", "h2", "h1", "done")]
    assert "vm3: h2 is its main host: needs the main-host move" in final["fault"]
    assert final["progress"]["main_host_vms"] == ["vm3"]
    assert final["progress"]["pages_done"] == 600
    assert "h2" not in agents.layout("vm1") and "h2" not in agents.layout("vm2")
    shown = engine.manager.show_operation({}, op_id=op["id"])
    assert len(shown["children"]) == 2


def test_host_drain_with_a_failed_move_fails(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.host_drain({}, host="h2")
    for _ in range(3):
        engine.worker.tick()
    (child,) = engine.db.list(parent_id=op["id"])
    agents.finish("h1", str(child.agent_op_id), "failed", "copy timed out")
    final = engine.run(op["id"])
    assert final["state"] == "failed"
    assert "vm1: part move h2 -> h3 failed: copy timed out" in final["fault"]


def test_host_drain_unplaced_part_fails(engine: Engine, agents: FakeAgents) -> None:
    agents.used.update(h3=990, h4=990)
    op = engine.manager.host_drain({}, host="h2")
    final = engine.run(op["id"])
    assert final["state"] == "failed" and "not placed" in final["fault"]


def test_abort_host_drain(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    agents.add_vm("vm2", "h3", {"h3": 50, "h2": 100})
    op = engine.manager.host_drain({}, host="h2")
    engine.worker.tick()            # plan
    engine.worker.tick()            # admit and start the children
    children = engine.db.list(parent_id=op["id"])
    assert len(children) == 2 and {c.state for c in children} == {"running"}
    engine.manager.abort_operation({}, op_id=op["id"])
    final = engine.run(op["id"])
    assert final["state"] == "aborted"
    assert {c.state for c in engine.db.list(parent_id=op["id"])} == {"aborted"}


def test_limits_per_link_fifo(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    for i in range(2, 5):
        agents.add_vm(f"vm{i}", "h1", {"h1": 10, "h2": 10})
    ops = [engine.manager.partial_migration({}, vm=f"vm{i}", source_host="h2",
                                            dest_host="h3")["id"] for i in range(1, 5)]
    engine.worker.tick()
    assert [engine.state(i) for i in ops] == ["running", "queued", "queued", "queued"]
    agents.finish("h1", str(engine.db.get(ops[0]).agent_op_id))  # type: ignore[union-attr]
    engine.worker.tick()    # records the end
    engine.worker.tick()    # admits the next one, in order
    assert [engine.state(i) for i in ops] == ["done", "running", "queued", "queued"]


def test_limits_per_host(db_path, agents: FakeAgents) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(db_path, agents, max_ops_per_host=2, max_ops_per_link=5)
    agents.hold = True
    for i in range(2, 6):
        agents.add_vm(f"vm{i}", "h1", {"h1": 10, "h2": 10, "h3": 10})
    a = engine.manager.partial_migration({}, vm="vm2", source_host="h2", dest_host="h4")
    b = engine.manager.partial_migration({}, vm="vm3", source_host="h3", dest_host="h4")
    c = engine.manager.partial_migration({}, vm="vm4", source_host="h2", dest_host="h4")
    # d needs h2 and h3: h2 is full (a and c use it... a does, c waits for it).
    d = engine.manager.partial_migration({}, vm="vm5", source_host="h2", dest_host="h3")
    # h3 is free (one move), but d waits for it first: FIFO per host.
    e = engine.manager.partial_migration({}, vm="vm1", source_host="h3", dest_host="h1")
    engine.worker.tick()
    states = [engine.state(x["id"]) for x in (a, b, c, d, e)]
    assert states == ["running", "running", "queued", "queued", "queued"]
    engine.close()


def test_one_move_per_vm_at_a_time(engine: Engine, agents: FakeAgents) -> None:
    agents.hold = True
    first = engine.manager.partial_migration({}, vm="vm1", source_host="h3", dest_host="h4")
    engine.worker.tick()
    drain = engine.manager.host_drain({}, host="h2")
    engine.worker.tick()           # plan: vm1's part on h2 -> a child move
    engine.worker.tick()
    (child,) = engine.db.list(parent_id=drain["id"])
    assert child.state == "queued"         # vm1 is busy with the first move
    agents.finish("h1", str(engine.db.get(first["id"]).agent_op_id))  # type: ignore[union-attr]
    engine.worker.tick()
    engine.worker.tick()
    assert engine.state(child.id) == "running"


# -- main-host migration -------------------------------------------------------------


def test_main_host_migration_switches_then_pulls(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    assert op["kind"] == "main_host_migration" and op["source_host"] == "h1"
    final = engine.run(op["id"])
    assert final["state"] == "done", final
    assert final["main_host"] == "h4" and final["progress"]["downtime_ms"] == 12.5
    assert agents.layout("vm1") == {"h4": 300, "h2": 200, "h3": 100}
    calls = [(c[0], c[1]) for c in agents.mutating_calls()]
    assert calls == [("incoming_prepare", "h4"), ("main_migrate", "h1"),
                     ("incoming_commit", "h4")]


def test_main_host_migration_chooses_a_host_holding_nothing(engine: Engine,
                                                          agents: FakeAgents) -> None:
    op = engine.manager.main_host_migration({}, vm="vm1")
    assert op["dest_host"] == "h4"


def test_reintegration_onto_another_host_is_a_main_host_move(engine: Engine,
                                                             agents: FakeAgents) -> None:
    op = engine.manager.reintegration({}, vm="vm1", target_host="h4")
    assert op["kind"] == "main_host_migration" and op["params"]["then"] == "reintegrate"
    assert engine.run(op["id"])["state"] == "done"
    assert agents.layout("vm1") == {"h4": 600}


@pytest.mark.parametrize(("dest", "match"), [("h1", "is the main host"),
                                             ("h2", "holds a part")])
def test_main_host_migration_bad_destinations(engine: Engine, agents: FakeAgents,
                                              dest: str, match: str) -> None:
    with pytest.raises(exception.Invalid, match=match):
        engine.manager.main_host_migration({}, vm="vm1", dest_host=dest)
    with pytest.raises(exception.Invalid, match="then must be"):
        engine.manager.main_host_migration({}, vm="vm1", dest_host="h4", then="later")
    assert engine.db.list() == [] and agents.mutating_calls() == []


def test_failed_main_host_migration_cleans_the_destination(engine: Engine,
                                                           agents: FakeAgents) -> None:
    op = engine.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    engine.worker.tick()                     # starting: prepared, started
    aop = engine.db.get(op["id"]).agent_op_id
    agents.incoming[("h4", "vm1")] = "busy"  # the incoming QEMU is still there
    agents.finish("h1", aop, "failed", "libvirt migration failed: boom")
    engine.worker.tick()
    assert engine.state(op["id"]) == "running"        # asks again while it goes
    agents.incoming[("h4", "vm1")] = "prepared"
    final = engine.run(op["id"])
    assert final["state"] == "failed" and "boom" in final["fault"]
    assert "goes on at h1" in final["fault"] and final["main_host"] == "h1"
    assert agents.layout("vm1") == {"h1": 300, "h2": 200, "h3": 100}
    assert ("h4", "vm1") not in agents.incoming


def test_abort_main_host_migration_before_the_switch(engine: Engine,
                                                     agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    engine.worker.tick()
    engine.manager.abort_operation({}, op_id=op["id"])
    agents.hold = False
    final = engine.run(op["id"])
    assert final["state"] == "aborted" and final["main_host"] == "h1"
    assert any(c[0] == "op_abort" and c[1] == "h1" for c in agents.calls)
    assert ("h4", "vm1") not in agents.incoming


def test_main_host_migration_resumes_after_a_restart(db_path, agents: FakeAgents,  # type: ignore[no-untyped-def]
                                                     ) -> None:
    first = Engine(db_path, agents)
    op = first.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    first.worker.tick()
    first.close()
    second = Engine(db_path, agents)
    try:
        assert second.run(op["id"])["state"] == "done"
        assert [c[0] for c in agents.mutating_calls()].count("main_migrate") == 1
    finally:
        second.close()


def test_cleanup_gives_up_after_its_timeout(engine: Engine, agents: FakeAgents) -> None:
    engine.worker.cleanup_timeout = 0.0
    op = engine.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    engine.worker.tick()
    aop = engine.db.get(op["id"]).agent_op_id
    agents.incoming[("h4", "vm1")] = "busy"     # it never goes
    agents.finish("h1", aop, "failed", "boom")
    final = engine.run(op["id"])
    assert final["state"] == "failed" and "was not cleaned up" in final["fault"]
    assert "goes on at h1" in final["fault"]


def test_a_failed_pull_says_where_the_vm_and_its_pages_are(engine: Engine,
                                                           agents: FakeAgents) -> None:
    op = engine.manager.main_host_migration({}, vm="vm1", dest_host="h4")
    for _ in range(10):
        engine.worker.tick()
        cur = engine.db.get(op["id"])
        if cur.step == "pulling":
            break
    assert cur.step == "pulling"
    agents.finish("h4", cur.agent_op_id, "failed", "h1 does not answer")
    final = engine.run(op["id"])
    assert final["state"] == "failed" and final["main_host"] == "h4"
    assert "runs on h4 now" in final["fault"] and "h1 keeps them" in final["fault"]
