"""The API client over a real keystoneauth1 session (the ``admin_token`` plugin of a
``noauth2`` API), against the real API app with a fake engine."""

from __future__ import annotations

from typing import Any

import pytest
from keystoneauth1 import session as ks_session
from keystoneauth1.loading import get_plugin_loader

from nova_ipmigrate.osc.client import APIError, Client
from tests.unit.api.test_app import VM


def _client(served: Any, token: str = "admin:admin", suffix: str = "",
            version: str = "1") -> Client:
    auth = get_plugin_loader("admin_token").load_from_options(endpoint=served.url,
                                                              token=token)
    return Client(ks_session.Session(auth=auth), served.url + suffix, api_version=version)


def test_requests_and_the_base_url(served: Any) -> None:
    for suffix in ("", "/", "/v1", "/v1/"):
        c = _client(served, suffix=suffix)
        assert c.base == served.url + "/v1"
        assert c.memory(VM)["main_host"] == "h1"


def test_errors_carry_status_code_and_request_id(served: Any) -> None:
    with pytest.raises(APIError) as e:
        _client(served).memory("no-such-server")
    assert (e.value.status, e.value.code) == (404, "ipmigrate.not_found")
    assert e.value.request_id and e.value.request_id.startswith("req-")
    assert f"(HTTP 404 ipmigrate.not_found, request {e.value.request_id})" in str(e.value)
    with pytest.raises(APIError) as e:
        _client(served, token="demo:demo").operations()
    assert e.value.status == 403


def test_api_versions(served: Any) -> None:
    assert _client(served).api_version == "1.1"          # "1": the newest known
    assert _client(served, version="1.0").operation("op-001")["id"] == "op-001"
    with pytest.raises(APIError) as e:
        _client(served, version="1.7").operation("op-001")
    assert e.value.status == 406


def test_pagination(served: Any) -> None:
    c = _client(served)
    assert [o["id"] for o in c.operations()] == [f"op-00{i}" for i in (4, 3, 2, 1, 0)]
    assert [o["id"] for o in c.operations(limit=1)] == ["op-004"]
    assert [o["id"] for o in c.operations(marker="op-002")] == ["op-001", "op-000"]


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def request(self, url: str, method: str, **kw: Any) -> Any:
        self.sent.append((method, url, kw.get("json"), kw["headers"]))
        return type("R", (), {"status_code": 202, "content": b"{}", "headers": {},
                              "json": lambda self: {"operation": {"id": "op-1"}}})()


def test_what_is_sent() -> None:
    rec = _Recorder()
    c = Client(rec, "http://api:9890", api_version="1.0")
    c.partial_migration(VM, "h2")
    c.drain("h/3")
    c.drain("h3", exclude=["h2"])
    assert rec.sent[0][:3] == ("POST", f"http://api:9890/v1/servers/{VM}/action",
                               {"partial_migration": {"source_host": "h2"}})
    assert rec.sent[0][3]["OpenStack-API-Version"] == "memory-migration 1.0"
    assert rec.sent[1][1:3] == ("http://api:9890/v1/hosts/h%2F3/drain", None)
    assert rec.sent[2][2] == {"drain": {"exclude": ["h2"]}}


def test_wait_times_out_without_stopping_the_operation(served: Any) -> None:
    seen: list[str] = []
    with pytest.raises(TimeoutError, match="op-001 is still running"):
        _client(served).wait("op-001", interval=0.01, timeout=0.05,
                             on_progress=lambda op: seen.append(op["state"]))
    assert seen and set(seen) == {"running"}
    assert not [c for c in served.engine.calls if c[0] == "abort_operation"]


def test_no_endpoint() -> None:
    with pytest.raises(ValueError, match="memory-migration"):
        Client(object(), "")
