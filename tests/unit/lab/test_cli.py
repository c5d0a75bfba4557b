"""The lab's ``openstack`` runner (``lab/cli.py``): the real executable, as a child
process, against the real API app with a fake engine."""

from __future__ import annotations

from typing import Any

import pytest

from nova_ipmigrate.lab import cli
from tests.unit.api.served import Served
from tests.unit.api.test_app import VM


def _cli(served: Served, lines: list[str]) -> cli.OpenStackCLI:
    return cli.OpenStackCLI(served.url, log=lines.append, timeout=120)


def test_json_output_and_the_log(served: Served) -> None:
    lines: list[str] = []
    mem = _cli(served, lines).json("server", "memory", "show", VM)
    assert mem["main_host"] == "h1" and len(mem["hosts"]) == 3
    assert lines[0] == f"$ openstack server memory show {VM} -f json"
    assert any('"main_host": "h1"' in line for line in lines)


def test_errors_keep_their_stderr(served: Served) -> None:
    lines: list[str] = []
    c = _cli(served, lines)
    res = c.run("server", "memory", "show", VM, token="demo:demo", check=False)
    assert res.rc == 1 and "HTTP 403 ipmigrate.forbidden" in res.err
    assert lines[0].endswith("(as demo)") and any("HTTP 403" in x for x in lines)
    with pytest.raises(cli.CLIError, match="exited 1: .*HTTP 403"):
        c.run("server", "memory", "show", VM, token="demo:demo")
    assert [r.rc for r in c.history] == [1, 1]


def test_no_os_variables_leak_in(served: Served, monkeypatch: pytest.MonkeyPatch
                                 ) -> None:
    monkeypatch.setenv("OS_CLOUD", "elsewhere")
    monkeypatch.setenv("OS_IPMIGRATE_API_VERSION", "9.9")
    assert _cli(served, []).run("server", "partial", "migration", "list").rc == 0


def test_a_missing_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(cli.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(cli.CLIError, match="client extra"):
        cli.executable()


def test_progress_lines() -> None:
    res = cli.CLIResult([], 0, "", "[###] 10.0% x\nnoise\n[####] 20.0% y\n")
    assert res.progress == ["[###] 10.0% x", "[####] 20.0% y"]
    with pytest.raises(cli.CLIError, match="not JSON"):
        res.json()
