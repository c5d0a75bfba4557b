"""A restarted engine resumes every unfinished operation (or rolls it back): the
engine objects are dropped mid-operation and recreated on the same SQLite file."""

from __future__ import annotations

from pathlib import Path

from nova_ipmigrate.engine.worker import AGENT_FORGOT
from tests.unit.engine.fakes import Engine, FakeAgents


def _restart(engine: Engine, db_path: Path, agents: FakeAgents) -> Engine:
    engine.close()
    return Engine(db_path, agents)


def test_resume_before_the_agent_was_called(engine: Engine, db_path: Path,
                                            agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.admit()            # persisted running/starting, then the crash
    engine = _restart(engine, db_path, agents)
    assert engine.run(op["id"])["state"] == "done"
    assert len(agents.agent_ops["h1"]) == 1
    engine.close()


def test_resume_after_the_agent_started_unrecorded(engine: Engine, db_path: Path,
                                                   agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4")
    engine.worker.admit()
    # The start reached the agent, the engine died before it persisted the reply.
    agents.partial_migrate({}, "h1", "/memfs/vm1", "h2", op["params"]["dest_endpoint"],
                           request_id=op["id"])
    engine = _restart(engine, db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "done" and final["agent_op_id"] == "h1-1"
    assert list(agents.agent_ops["h1"]) == ["h1-1"]     # the same agent op, not a second
    engine.close()


def test_reattach_running_by_agent_op_id(engine: Engine, db_path: Path,
                                         agents: FakeAgents) -> None:
    agents.step_pages = 20
    op = engine.manager.reintegration({}, vm="vm1")
    engine.worker.tick()
    engine.worker.tick()
    cur = engine.db.get(op["id"])
    assert cur is not None and cur.step == "running" and cur.progress["pages_done"] == 20
    engine = _restart(engine, db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "done"
    assert agents.layout("vm1") == {"h1": 600}
    assert len(agents.agent_ops["h1"]) == 1
    engine.close()


def test_reattach_running_by_request_id(engine: Engine, db_path: Path,
                                        agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.tick()
    cur = engine.db.get(op["id"])
    assert cur is not None
    engine.db.update(cur, agent_op_id=None)       # e.g. written by an older engine
    engine = _restart(engine, db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "done" and final["agent_op_id"] == "h1-1"
    assert ("ops", "h1", {}) in agents.calls
    engine.close()


def test_abort_resumes_after_a_crash(engine: Engine, db_path: Path,
                                     agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.tick()
    engine.manager.abort_operation({}, op_id=op["id"])   # the engine dies before the abort
    engine = _restart(engine, db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "aborted"
    assert [c[0] for c in agents.calls].count("op_abort") == 1
    engine.close()


def test_abort_sent_again_after_a_crash(engine: Engine, db_path: Path,
                                        agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.tick()
    engine.manager.abort_operation({}, op_id=op["id"])
    agents.hold_abort = True
    engine.worker.step(op["id"])     # abort sent; the agent op is still running
    assert engine.state(op["id"]) == "aborting"
    engine = _restart(engine, db_path, agents)
    agents.hold_abort = False
    final = engine.run(op["id"])
    assert final["state"] == "aborted"
    assert [c[0] for c in agents.calls].count("op_abort") == 2
    engine.close()


def test_abort_of_an_unrecorded_start(engine: Engine, db_path: Path,
                                      agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4")
    engine.worker.admit()
    agents.partial_migrate({}, "h1", "/memfs/vm1", "h2", op["params"]["dest_endpoint"],
                           request_id=op["id"])
    engine.manager.abort_operation({}, op_id=op["id"])
    engine = _restart(engine, db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "aborted" and final["agent_op_id"] == "h1-1"
    assert agents.agent_ops["h1"]["h1-1"]["state"] == "aborted"
    engine.close()


def test_agent_restarted_rolls_back(engine: Engine, db_path: Path,
                                    agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.tick()
    engine.close()
    agents.restart("h1")              # the data plane rolled the move back
    engine = Engine(db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "failed"
    assert final["fault"] == AGENT_FORGOT.format(host="h1", agent_op="h1-1")
    assert "rolled back" in final["fault"]
    assert agents.layout("vm1") == {"h1": 300, "h2": 200, "h3": 100}
    engine.close()


def test_agent_restarted_while_aborting(engine: Engine, db_path: Path,
                                        agents: FakeAgents) -> None:
    agents.hold = True
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.worker.tick()
    engine.manager.abort_operation({}, op_id=op["id"])
    engine.close()
    agents.restart("h1")
    engine = Engine(db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "failed" and "no longer knows" in final["fault"]
    engine.close()


def test_drain_resumes(engine: Engine, db_path: Path, agents: FakeAgents) -> None:
    agents.add_vm("vm2", "h3", {"h3": 50, "h2": 100})
    op = engine.manager.host_drain({}, host="h2")
    engine.worker.tick()             # planned, children queued
    engine.worker.tick()             # children started
    engine = _restart(engine, db_path, agents)
    final = engine.run(op["id"])
    assert final["state"] == "done"
    assert {c.state for c in engine.db.list(parent_id=op["id"])} == {"done"}
    assert sum(len(v) for v in agents.agent_ops.values()) == 2
    engine.close()
