"""``openstack compute host drain`` through the real shell, against the real API app
(fake engine)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.api.test_app import _op


def test_drain_with_excluded_hosts(osc: Any, served: Any) -> None:
    r = osc("compute", "host", "drain", "h3", "--exclude", "h2", "--exclude", "h5",
            "-f", "json")
    assert r.rc == 0, r.err
    op = r.json()
    assert op["kind"] == "host_drain" and op["source_host"] == "h3"
    assert ("host_drain", ("h3",), {"exclude": ["h2", "h5"]}) in served.engine.calls


def test_drain_wait_lists_its_part_moves(osc: Any, served: Any, progressing: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    progressing("done")
    wait_show = served.engine.show_operation
    polls: list[str] = []

    def show(ctxt: Any, op_id: str) -> Any:
        polls.append(op_id)
        op = wait_show(ctxt, op_id)
        return {**op, "kind": "host_drain",
                "children": [_op(20, state="done", source_host="h3", dest_host="h4"),
                             _op(21, state="done", source_host="h3", dest_host="h5")]}

    monkeypatch.setattr(served.engine, "show_operation", show)
    r = osc("compute", "host", "drain", "h3", "--wait")
    assert r.rc == 0, r.err
    assert "op-020 done h3 -> h4" in r.out and "op-021 done h3 -> h5" in r.out
    assert "100.0%" in r.err
    op = osc("server", "partial", "migration", "show", "op-013", "-f", "json").json()
    assert op["children"][1]["dest_host"] == "h5" and op["kind"] == "host_drain"


def test_drain_of_an_unknown_host_is_refused(osc: Any, served: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from nova_ipmigrate import exception

    def unknown(*a: Any, **kw: Any) -> Any:
        raise exception.Invalid("unknown host 'nohost'")

    monkeypatch.setattr(served.engine, "host_drain", unknown)
    r = osc("compute", "host", "drain", "nohost")
    assert r.rc == 1 and "unknown host 'nohost' (HTTP 400" in r.err


def test_drain_needs_admin(osc: Any, served: Any) -> None:
    r = osc("compute", "host", "drain", "h3", token="demo:demo")
    assert r.rc == 1 and "HTTP 403" in r.err
    assert served.engine.calls == []
