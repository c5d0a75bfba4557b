"""``openstack server partial migration list|show|abort`` through the real shell,
against the real API app (fake engine; the API's page size is 2)."""

from __future__ import annotations

from typing import Any

import pytest

from nova_ipmigrate import exception
from nova_ipmigrate.engine import models
from nova_ipmigrate.osc import client
from nova_ipmigrate.osc.v1 import operation


def test_list_follows_every_page(osc: Any, served: Any) -> None:
    rows = osc("server", "partial", "migration", "list", "-f", "json").json()
    assert [r["ID"] for r in rows] == ["op-004", "op-003", "op-002", "op-001", "op-000"]
    assert set(rows[0]) == {"ID", "Kind", "State", "Server ID", "Source Host",
                            "Destination Host", "Progress"}
    assert rows[0]["Progress"]["percent"] == 25.0
    assert len([c for c in served.engine.calls if c[0] == "list_operations"]) == 3


def test_list_one_page_with_limit_and_marker(osc: Any) -> None:
    rows = osc("server", "partial", "migration", "list", "--limit", "2", "--marker",
               "op-004", "-f", "value", "-c", "ID").out.split()
    assert rows == ["op-003", "op-002"]


def test_list_filters_and_long(osc: Any, served: Any) -> None:
    served.engine.ops[1]["state"] = "failed"
    rows = osc("server", "partial", "migration", "list", "--state", "failed", "--long",
               "--server", served.engine.ops[1]["vm"], "-f", "json").json()
    assert [r["ID"] for r in rows] == ["op-001"]
    assert {"Step", "Strategy", "Main Host", "Fault", "Created At"} <= set(rows[0])
    assert ("list_operations", (), {"vm": served.engine.ops[1]["vm"], "state": "failed"}) \
        in served.engine.calls


def test_list_refuses_an_unknown_state(osc: Any, served: Any) -> None:
    r = osc("server", "partial", "migration", "list", "--state", "sleeping")
    assert r.rc != 0 and "invalid choice" in r.err
    assert served.engine.calls == []


def test_list_of_an_unknown_marker(osc: Any) -> None:
    r = osc("server", "partial", "migration", "list", "--marker", "op-999")
    assert r.rc == 1 and "marker 'op-999' not found (HTTP 400" in r.err


def test_show(osc: Any) -> None:
    r = osc("server", "partial", "migration", "show", "op-002")
    assert r.rc == 0, r.err
    assert "25.0% (25/100 pages, 0 B)" in r.out
    assert osc("server", "partial", "migration", "show", "op-002", "-f", "json").json()[
        "dest_host"] == "h4"
    r = osc("server", "partial", "migration", "show", "op-999")
    assert r.rc == 1 and "HTTP 404" in r.err


def test_abort(osc: Any, served: Any) -> None:
    r = osc("server", "partial", "migration", "abort", "op-003")
    assert r.rc == 0 and r.out == "", (r.out, r.err)
    assert ("abort_operation", ("op-003",), {}) in served.engine.calls


def test_abort_wait_expects_aborted(osc: Any, progressing: Any) -> None:
    progressing("aborted")
    assert osc("server", "partial", "migration", "abort", "op-003", "--wait").rc == 0
    progressing("done")
    r = osc("server", "partial", "migration", "abort", "op-003", "--wait")
    assert r.rc == 1 and "ended done" in r.err


def test_abort_of_a_finished_operation(osc: Any, served: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def final(*a: Any) -> Any:
        raise exception.Conflict("operation op-003 is done")

    monkeypatch.setattr(served.engine, "abort_operation", final)
    r = osc("server", "partial", "migration", "abort", "op-003")
    assert r.rc == 1 and "operation op-003 is done (HTTP 409 ipmigrate.conflict" in r.err


def test_abort_needs_admin(osc: Any, served: Any) -> None:
    r = osc("server", "partial", "migration", "abort", "op-003", token="demo:demo")
    assert r.rc == 1 and "HTTP 403" in r.err
    assert served.engine.calls == []


def test_the_cli_knows_the_engine_s_states() -> None:
    assert operation.STATES == models.STATES
    assert client.FINAL_STATES == set(models.FINAL_STATES)
