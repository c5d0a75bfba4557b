"""Requests the engine refuses: a clear error, nothing persisted, no agent changed."""

from __future__ import annotations

from typing import Any

import pytest

from nova_ipmigrate import exception
from tests.unit.engine.fakes import Engine, FakeAgents


def _refused(engine: Engine, agents: FakeAgents, exc: type[Exception], match: str,
             method: str, **kwargs: Any) -> None:
    before = [o.to_dict() for o in engine.db.list()]
    with pytest.raises(exc, match=match):
        getattr(engine.manager, method)({}, **kwargs)
    assert [o.to_dict() for o in engine.db.list()] == before
    assert agents.mutating_calls() == []


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"vm": "nope", "source_host": "h2"}, exception.NotFound, "no known host .* nope"),
    ({"vm": "vm1", "source_host": "h4"}, exception.Invalid, "h4 holds no part of vm1"),
    ({"vm": "vm1", "source_host": "h1"}, exception.Invalid, "main host of vm1"),
    ({"vm": "vm1", "source_host": "h2", "dest_host": "h2"}, exception.Invalid,
     "must differ"),
    ({"vm": "vm1", "source_host": "h2", "dest_host": "h9"}, exception.Invalid,
     "not a known host"),
    ({"vm": "vm1", "source_host": "h9"}, exception.Invalid, "not a known host"),
    ({"vm": "", "source_host": "h2"}, exception.Invalid, "non-empty string"),
    ({"vm": 3, "source_host": "h2"}, exception.Invalid, "non-empty string"),
    ({"vm": "vm1", "source_host": "h2", "strategy": "fast"}, exception.Invalid,
     "unknown strategy"),
    ({"vm": "vm1", "source_host": "h2", "max_rate_mb_s": 0}, exception.Invalid,
     "positive number"),
    ({"vm": "vm1", "source_host": "h2", "max_rate_mb_s": "1"}, exception.Invalid,
     "positive number"),
])
def test_partial_migration_refused(engine: Engine, agents: FakeAgents, kwargs: dict[str, Any],
                                   exc: type[Exception], match: str) -> None:
    _refused(engine, agents, exc, match, "partial_migration", **kwargs)


def test_destination_without_room(engine: Engine, agents: FakeAgents) -> None:
    agents.used["h4"] = 900            # 100 free, the part has 200
    _refused(engine, agents, exception.InsufficientCapacity, "h4 has room for 100",
             "partial_migration", vm="vm1", source_host="h2", dest_host="h4")


def test_no_destination_has_room(engine: Engine, agents: FakeAgents) -> None:
    agents.used.update(h3=950, h4=950)
    _refused(engine, agents, exception.InsufficientCapacity, "no destination",
             "partial_migration", vm="vm1", source_host="h2")


def test_room_counts_queued_moves(engine: Engine, agents: FakeAgents) -> None:
    agents.add_vm("vm2", "h2", {"h2": 10, "h3": 700})
    engine.manager.partial_migration({}, vm="vm2", source_host="h3", dest_host="h4")
    # h4 has 1000 - 700 reserved = 300 free: vm1's 200 pages from h2 still fit, ...
    engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4")
    # ... but a third move of 100 more would not: 1000 - 900 = 100 free, needs 100: fits;
    agents.add_vm("vm3", "h3", {"h3": 1, "h1": 101})
    _refused(engine, agents, exception.InsufficientCapacity, "room for 100",
             "partial_migration", vm="vm3", source_host="h1", dest_host="h4")


def test_unreachable_destination(engine: Engine, agents: FakeAgents) -> None:
    agents.down.add("h4")
    _refused(engine, agents, exception.Unavailable, "h4", "partial_migration",
             vm="vm1", source_host="h2", dest_host="h4")


def test_conflicting_operation(engine: Engine, agents: FakeAgents) -> None:
    first = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    for method, kwargs in [("partial_migration", {"vm": "vm1", "source_host": "h3"}),
                           ("reintegration", {"vm": "vm1"})]:
        _refused(engine, agents, exception.Conflict, f"active partial_migration "
                 f"operation {first['id']}", method, **kwargs)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"vm": "nope"}, exception.NotFound, "nope"),
    ({"vm": "vm1", "target_host": "h2"}, exception.Invalid, "h2 holds a part of vm1"),
    ({"vm": "vm1", "target_host": "h7"}, exception.Invalid, "not a known host"),
    ({"vm": "vm1", "strategy": None}, exception.Invalid, "unknown strategy"),
])
def test_reintegration_refused(engine: Engine, agents: FakeAgents, kwargs: dict[str, Any],
                               exc: type[Exception], match: str) -> None:
    _refused(engine, agents, exc, match, "reintegration", **kwargs)


def test_reintegration_of_a_gathered_vm_refused(engine: Engine, agents: FakeAgents) -> None:
    agents.add_vm("vm2", "h2", {"h2": 10})
    _refused(engine, agents, exception.Invalid, "on its main host h2 already",
             "reintegration", vm="vm2")


def test_broken_vm_refused(engine: Engine, agents: FakeAgents) -> None:
    agents.vms["vm1"]["broken"] = True
    _refused(engine, agents, exception.Invalid, "broken", "partial_migration",
             vm="vm1", source_host="h2")


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"sub_hosts": []}, exception.Invalid, "at least one sub-host"),
    ({"sub_hosts": "h2"}, exception.Invalid, "list of host names"),
    ({"sub_hosts": ["h2", "h2"]}, exception.Invalid, "twice"),
    ({"sub_hosts": ["h4", "h1"]}, exception.Invalid, "its own sub-host"),
    ({"sub_hosts": ["h8"]}, exception.Invalid, "not a known host"),
    ({"resident_limit": -1}, exception.Invalid, "non-negative integer"),
    ({"resident_limit": True}, exception.Invalid, "non-negative integer"),
    ({"vm": "vm1"}, exception.Conflict, "split already"),
    ({"path": "/memfs/vm1", "vm": "other"}, exception.Conflict, "split already"),
    ({"main_host": "h0"}, exception.Invalid, "not a known host"),
])
def test_split_refused(engine: Engine, agents: FakeAgents, kwargs: dict[str, Any],
                       exc: type[Exception], match: str) -> None:
    args = {"main_host": "h1", "path": "/memfs/vm9", "vm": "vm9", "sub_hosts": ["h2"],
            "resident_limit": 2**20, **kwargs}
    _refused(engine, agents, exc, match, "split", **args)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"host": "h9"}, exception.Invalid, "not a known host"),
    ({"host": "h2", "exclude": ["h2"]}, exception.Invalid, "cannot be excluded"),
    ({"host": "h2", "exclude": ["hx"]}, exception.Invalid, "not a known host"),
    ({"host": "h2", "exclude": "h3"}, exception.Invalid, "list of host names"),
])
def test_host_drain_refused(engine: Engine, agents: FakeAgents, kwargs: dict[str, Any],
                            exc: type[Exception], match: str) -> None:
    _refused(engine, agents, exc, match, "host_drain", **kwargs)


def test_second_drain_of_a_host_conflicts(engine: Engine, agents: FakeAgents) -> None:
    engine.manager.host_drain({}, host="h2")
    _refused(engine, agents, exception.Conflict, "being drained", "host_drain", host="h2")


def test_show_list_abort_errors(engine: Engine, agents: FakeAgents) -> None:
    _refused(engine, agents, exception.NotFound, "no operation", "show_operation",
             op_id="x")
    _refused(engine, agents, exception.NotFound, "no operation", "abort_operation",
             op_id="x")
    _refused(engine, agents, exception.Invalid, "unknown state", "list_operations",
             state="sleeping")


def test_accepted_request_is_queued(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    assert op["state"] == "queued" and op["kind"] == "partial_migration"
    # h4 holds nothing of vm1, h3 does: a holder of the same VM is preferred.
    assert (op["main_host"], op["source_host"], op["dest_host"]) == ("h1", "h2", "h3")
    assert op["params"]["pages"] == 200
    assert op["params"]["dest_endpoint"]["name"] == "h3"
    assert op["request_id"] == op["id"]
    assert agents.mutating_calls() == []
    assert engine.manager.show_operation({}, op_id=op["id"])["id"] == op["id"]
    assert [o["id"] for o in engine.manager.list_operations({}, vm="vm1")] == [op["id"]]
    assert engine.manager.list_operations({}, state="done") == []


def test_show_vm_reports_the_layout_and_active_operations(engine: Engine,
                                                            agents: FakeAgents) -> None:
    vm = engine.manager.show_vm({}, vm="vm1")
    assert vm["main_host"] == "h1" and vm["broken"] is False
    assert vm["pages_by_host"] == {str(h): int(n) for h, n in
                                   agents.vms["vm1"]["pages_by_host"].items()}
    assert vm["active_operations"] == []
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4")
    assert engine.manager.show_vm({}, vm="vm1")["active_operations"] == [op["id"]]
    with pytest.raises(exception.NotFound, match="no known host"):
        engine.manager.show_vm({}, vm="nope")
    with pytest.raises(exception.Invalid, match="non-empty string"):
        engine.manager.show_vm({}, vm=None)


def test_strategies_are_the_installed_plugins(engine: Engine, agents: FakeAgents,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from nova_ipmigrate.engine import manager as manager_mod

    assert {"ipmigrate", "naive"} <= set(manager_mod.strategy_names())
    # a third-party strategy installed next to the engine is accepted by name
    monkeypatch.setattr(manager_mod, "_STRATEGY_NAMES", ["ipmigrate", "naive", "zstd4"])
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2", dest_host="h4",
                                          strategy="zstd4")
    assert op["strategy"] == "zstd4"
    with pytest.raises(exception.Invalid, match="one of ipmigrate, naive, zstd4"):
        engine.manager.reintegration({}, vm="vm2", strategy=["zstd4"])
