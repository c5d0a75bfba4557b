"""The OSC plugin module and its entry points (as installed: setup.cfg)."""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

import pytest

from nova_ipmigrate.osc import plugin
from nova_ipmigrate.osc.client import Client

COMMANDS = {"server_reintegrate", "server_split", "server_memory_show",
            "server_partial_migration_list", "server_partial_migration_show",
            "server_partial_migration_abort", "compute_host_drain"}


def _eps(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in metadata.entry_points(group=group)
            if ep.value.startswith("nova_ipmigrate.")}


def test_entry_points_load() -> None:
    assert _eps("openstack.cli.extension")["ipmigrate"].load() is plugin
    hook = _eps("openstack.cli.server_migrate")["ipmigrate"].load()
    assert hook.__name__ == "PartialMigrateHook"
    cmds = _eps("openstack.ipmigrate.v1")
    assert set(cmds) == COMMANDS
    for ep in cmds.values():
        assert ep.load().get_parser


class _Instance:
    region_name = "RegionTwo"
    interface = "internal"
    session = object()
    _api_version = {"ipmigrate": "1.0"}

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def get_endpoint_for_service_type(self, service_type: str, **kw: Any) -> str:
        self.asked.append((service_type, kw))
        return "http://ctl:9890/"


def test_make_client_uses_the_catalog_and_the_version() -> None:
    inst = _Instance()
    c = plugin.make_client(inst)
    assert isinstance(c, Client) and c.session is inst.session
    assert c.base == "http://ctl:9890/v1" and c.api_version == "1.0"
    assert inst.asked == [("memory-migration",
                           {"region_name": "RegionTwo", "interface": "internal"})]


def test_the_version_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_IPMIGRATE_API_VERSION", "1.0")
    p = plugin.build_option_parser(argparse.ArgumentParser())
    assert p.parse_args([]).os_ipmigrate_api_version == "1.0"
    assert p.parse_args(["--os-ipmigrate-api-version", "1.1"]).os_ipmigrate_api_version == "1.1"
    assert plugin.DEFAULT_API_VERSION in plugin.API_VERSIONS


def test_the_shell_lists_the_commands(osc: Any) -> None:
    r = osc("command", "list", "--group", "ipmigrate", "-f", "json")
    assert r.rc == 0, r.err
    (group,) = r.json()
    assert set(group["Commands"]) == {c.replace("_", " ") for c in COMMANDS}


def test_an_unsupported_api_version_is_refused(osc: Any) -> None:
    r = osc("--os-ipmigrate-api-version", "1.9", "server", "partial", "migration", "list")
    assert r.rc == 1 and "HTTP 406" in r.err
