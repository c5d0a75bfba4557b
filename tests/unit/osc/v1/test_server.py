"""``openstack server reintegrate|split|memory show`` through the real shell, against
the real API app (fake engine)."""

from __future__ import annotations

from typing import Any

import pytest
from osc_lib import exceptions

from nova_ipmigrate.osc.v1 import common
from tests.unit.api.test_app import VM


def _calls(served: Any, name: str) -> list[Any]:
    return [c for c in served.engine.calls if c[0] == name]


def test_reintegrate_shows_the_operation(osc: Any, served: Any) -> None:
    r = osc("server", "reintegrate", VM, "--host", "h3", "--strategy", "naive", "-f", "json")
    assert r.rc == 0, r.err
    op = r.json()
    assert op["kind"] == "reintegration" and op["id"] == "op-010"
    assert op["progress"]["percent"] == 25.0 and op["server_id"] == VM
    assert _calls(served, "reintegration") == [
        ("reintegration", (VM,), {"target_host": "h3", "strategy": "naive"})]


def test_reintegrate_wait_ends_with_the_final_state(osc: Any, progressing: Any) -> None:
    progressing("done")
    r = osc("server", "reintegrate", VM, "--wait", "-f", "value", "-c", "state")
    assert r.rc == 0, r.err
    assert r.out.strip() == "done"
    assert r.err.count("\n") == 3 and "100.0%" in r.err


def test_split_passes_every_option(osc: Any, served: Any) -> None:
    r = osc("server", "split", VM, "--main-host", "h1", "--path", "vm/pc.ram",
            "--sub-host", "h2", "--sub-host", "h3", "--resident-limit", "1048576",
            "-f", "value", "-c", "kind")
    assert r.rc == 0, r.err
    assert r.out.strip() == "split"
    assert _calls(served, "split") == [
        ("split", ("h1", "vm/pc.ram", VM),
         {"sub_hosts": ["h2", "h3"], "resident_limit": 1048576})]


def test_split_needs_its_main_host_and_path(osc: Any, served: Any) -> None:
    r = osc("server", "split", VM, "--path", "vm/pc.ram")
    assert r.rc != 0 and "--main-host" in r.err
    assert served.engine.calls == []


def test_split_refuses_a_bad_resident_limit(osc: Any, served: Any) -> None:
    r = osc("server", "split", VM, "--main-host", "h1", "--path", "p",
            "--resident-limit", "-1")
    assert r.rc == 1 and "HTTP 400 ipmigrate.invalid" in r.err
    assert served.engine.calls == []


def test_memory_show_in_table_and_json(osc: Any) -> None:
    r = osc("server", "memory", "show", VM)
    assert r.rc == 0, r.err
    assert "h2 (sub): 20 pages, 80.0 KiB" in r.out and "h1 (main): 5 pages" in r.out
    mem = osc("server", "memory", "show", VM, "-f", "json").json()
    assert [h["host"] for h in mem["hosts"]] == ["h1", "h2", "h3"]
    assert mem["total_bytes"] == 35 * 4096 and mem["page_size"] == 4096


def test_memory_show_of_an_unknown_server(osc: Any) -> None:
    r = osc("server", "memory", "show", "33333333-2222-3333-4444-555555555555")
    assert r.rc == 1 and "HTTP 404" in r.err


def test_memory_show_needs_admin(osc: Any, served: Any) -> None:
    r = osc("server", "memory", "show", VM, token="demo:demo")
    assert r.rc == 1 and "HTTP 403" in r.err
    assert served.engine.calls == []


class _Compute:
    def __init__(self, servers: dict[str, str]) -> None:
        self.servers = servers

    def find_server(self, name: str, ignore_missing: bool = True) -> Any:
        if name not in self.servers:
            raise LookupError(f"No Server found for {name}")
        return type("Server", (), {"id": self.servers[name]})()


class _App:
    def __init__(self, servers: dict[str, str]) -> None:
        self.client_manager = type("CM", (), {"compute": _Compute(servers)})()


def test_server_names_are_looked_up_in_nova() -> None:
    app = _App({"bigvm": VM})
    assert common.server_id(app, "bigvm") == VM
    assert common.server_id(app, VM.upper()) == VM       # an ID needs no lookup
    with pytest.raises(exceptions.CommandError, match="no server 'other'"):
        common.server_id(app, "other")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (4096, "4.0 KiB"),
                                     (3 * 2**20 // 2, "1.5 MiB"), (5 * 2**30, "5.0 GiB"),
                                     (2**42, "4096.0 GiB")])
def test_sizes(n: int, text: str) -> None:
    assert common.size(n) == text
