"""``openstack server migrate --partial``: the hook on OSC's own command, through the
real shell, against the real API app (fake engine)."""

from __future__ import annotations

from typing import Any

import pytest
from openstackclient.compute.v2 import server as osc_server

from nova_ipmigrate import exception
from tests.unit.api.test_app import VM


def _calls(served: Any, name: str) -> list[Any]:
    return [c for c in served.engine.calls if c[0] == name]


def test_partial_migration_is_requested_with_its_options(osc: Any, served: Any) -> None:
    r = osc("server", "migrate", "--partial", "h2", "--host", "h4", "--strategy", "naive",
            "--max-rate", "50", VM)
    assert r.rc == 0, r.err
    assert r.out.strip() == "Partial migration op-009 accepted (queued)"
    assert _calls(served, "partial_migration") == [
        ("partial_migration", (VM, "h2"),
         {"dest_host": "h4", "strategy": "naive", "max_rate_mb_s": 50.0})]


def test_the_destination_is_optional(osc: Any, served: Any) -> None:
    assert osc("server", "migrate", "--partial", "h3", VM).rc == 0
    (call,) = _calls(served, "partial_migration")
    assert call[1] == (VM, "h3") and call[2].get("dest_host") is None


def test_wait_shows_progress_until_done(osc: Any, progressing: Any) -> None:
    polled = progressing("done")
    r = osc("server", "migrate", "--partial", "h2", "--host", "h4", "--wait", VM)
    assert r.rc == 0, r.err
    bars = [line for line in r.err.splitlines() if line.startswith("[")]
    assert [b.split("]")[1].split("%")[0].strip() for b in bars] == ["30.0", "70.0", "100.0"]
    assert "partial_migration h2 -> h4 running" in bars[0]
    assert r.out.strip() == "Partial migration op-009 done: h2 -> h4"
    assert polled == ["op-009"] * 3


def test_wait_fails_with_the_fault_when_the_move_fails(osc: Any, progressing: Any) -> None:
    progressing("failed", fault="destination agent ipm-h4 died")
    r = osc("server", "migrate", "--partial", "h2", "--host", "h4", "--wait", VM)
    assert r.rc == 1
    assert "partial_migration op-009 ended failed: destination agent ipm-h4 died" in r.err


@pytest.mark.parametrize("args, message", [
    (["--partial", "h2", "--live-migration"], "--partial cannot be combined with "
                                              "--live-migration"),
    (["--partial", "h2", "--block-migration"], "cannot be combined with --block-migration"),
    (["--partial", "h2", "--max-rate", "0"], "--max-rate must be positive"),
    (["--strategy", "naive"], "--strategy needs --partial"),
    (["--max-rate", "5"], "--max-rate needs --partial"),
])
def test_bad_combinations_are_refused_before_any_request(osc: Any, served: Any,
                                                         args: list[str],
                                                         message: str) -> None:
    r = osc("server", "migrate", *args, VM)
    assert r.rc == 1 and message in r.err, r.err
    assert served.engine.calls == []


@pytest.mark.parametrize("token, server, source, status", [
    ("demo:demo", VM, "h2", "HTTP 403 ipmigrate.forbidden"),
    ("admin:admin", "22222222-2222-3333-4444-555555555555", "h2",
     "HTTP 404 ipmigrate.not_found"),
    ("admin:admin", VM, "nohost", "HTTP 400 ipmigrate.invalid"),
    ("admin:admin", VM, "busy", "HTTP 409 ipmigrate.conflict"),
])
def test_refusals_are_reported_with_their_http_error(osc: Any, served: Any, token: str,
                                                     server: str, source: str,
                                                     status: str,
                                                     monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    if source == "nohost":
        def unknown(*a: Any, **kw: Any) -> Any:
            raise exception.Invalid("nohost holds no part of the server")
        monkeypatch.setattr(served.engine, "partial_migration", unknown)
    r = osc("server", "migrate", "--partial", source, server, token=token)
    assert r.rc == 1 and status in r.err, r.err
    assert "request req-" in r.err
    if token == "demo:demo":
        assert served.engine.calls == []


def test_without_partial_server_migrate_is_osc_s_own(osc: Any, served: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(osc_server.MigrateServer, "take_action",
                        lambda self, parsed_args: seen.append(parsed_args))
    assert osc("server", "migrate", "--live-migration", "--host", "c2", VM).rc == 0
    (args,) = seen
    assert args.live_migration and args.host == "c2" and args.partial is None
    assert served.engine.calls == []


def test_help_lists_the_partial_options(osc: Any) -> None:
    r = osc("help", "server", "migrate")
    assert r.rc == 0
    for flag in ("--partial <source-host>", "--strategy <strategy>", "--max-rate <MiB/s>",
                 "partial migration (nova-ipmigrate)"):
        assert flag in r.out, r.out


def test_an_engine_fault_is_not_a_traceback(osc: Any, served: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **kw: Any) -> Any:
        raise exception.Invalid("strategy 'nope' is not known")

    monkeypatch.setattr(served.engine, "partial_migration", boom)
    r = osc("server", "migrate", "--partial", "h2", "--strategy", "nope", VM)
    assert r.rc == 1 and "strategy 'nope' is not known (HTTP 400" in r.err
    assert "Traceback" not in r.err


def test_the_main_host_s_part_moves_as_a_main_host_migration(osc: Any, served: Any) -> None:
    r = osc("server", "migrate", "--partial", "h1", "--host", "h4", VM)
    assert r.rc == 0, r.err
    assert r.out.strip() == "Main-host migration op-012 accepted (queued)"
    assert _calls(served, "main_host_migration") == [
        ("main_host_migration", (VM,), {"dest_host": "h4"})]
    assert _calls(served, "partial_migration") == []


@pytest.mark.parametrize("args, message", [
    (["--max-rate", "5"], "takes neither --strategy nor --max-rate"),
    (["--os-ipmigrate-api-version", "1.0"], "needs API version 1.1"),
])
def test_a_main_host_migration_refuses_what_it_cannot_do(osc: Any, served: Any,
                                                         args: list[str],
                                                         message: str) -> None:
    if args[0].startswith("--os"):
        r = osc(*args, "server", "migrate", "--partial", "h1", VM)
    else:
        r = osc("server", "migrate", "--partial", "h1", *args, VM)
    assert r.rc == 1 and message in r.err, r.err
    assert _calls(served, "main_host_migration") == []
