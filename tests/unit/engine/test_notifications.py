"""Versioned notifications: payload, publisher, event types, rate limit."""

from __future__ import annotations

from pathlib import Path

from nova_ipmigrate.engine.notifications import Notifications, payload
from tests.unit.engine.fakes import Engine, FakeAgents, make_notifier, notifications


def test_payload_is_versioned(engine: Engine, agents: FakeAgents) -> None:
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    engine.run(op["id"])
    sent = notifications()
    assert [n[0] for n in sent][0] == "ipmigrate.operation.start"
    assert sent[-1][0] == "ipmigrate.operation.end"
    for event, prio, body, publisher in sent:
        assert publisher == "ipmigrate-engine:eng1"
        assert event.split(".")[-1] in ("start", "progress", "end")
        assert prio == "INFO"
        assert body["ipmigrate_object.name"] == "OperationPayload"
        assert body["ipmigrate_object.namespace"] == "ipmigrate"
        assert body["ipmigrate_object.version"] == "1.0"
        data = body["ipmigrate_object.data"]
        assert data["id"] == op["id"] and data["vm"] == "vm1"
        assert data["source_host"] == "h2"
    assert sent[-1][2]["ipmigrate_object.data"]["state"] == "done"
    assert sent[-1][2]["ipmigrate_object.data"]["progress"]["pages_done"] == 200


def test_progress_is_rate_limited(db_path: Path, agents: FakeAgents) -> None:
    now = [0.0]
    engine = Engine(db_path, agents, notifier=make_notifier())
    engine.notifications = Notifications(make_notifier(), "eng1", 10.0, clock=lambda: now[0])
    engine.worker.notify = engine.notifications
    agents.step_pages = 10                      # 20 polls for 200 pages
    op = engine.manager.partial_migration({}, vm="vm1", source_host="h2")
    for i in range(9):
        now[0] = i * 3.0                        # 0, 3, 6, ... 24 s
        engine.worker.tick()
    progress = [n for n in notifications() if n[0] == "ipmigrate.operation.progress"]
    assert len(progress) == 3                   # at 0, 12 and 24 (10 s or more apart)
    engine.close()
    assert op


def test_no_notifier_is_fine() -> None:
    n = Notifications(None, "h", 0.0)
    assert payload({"id": "x"})["ipmigrate_object.data"]["id"] == "x"
    assert n.notifier is None
