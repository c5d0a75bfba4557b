"""ipmigrate-lab (nova_ipmigrate.cmd.lab): arguments, exit codes and output, with the
lab itself faked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.cmd import lab as cli
from nova_ipmigrate.lab.hosts import DownReport, Lab, LabError, LabHost, LabStatus


@pytest.fixture
def conf_file(tmp_path: Path) -> str:
    path = tmp_path / "lab.conf"
    path.write_text(f"[lab]\nstate_dir = {tmp_path / 'state'}\nprefix = ipmcli\n"
                    "default_link = 1gbit\n")
    return str(path)


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)


def _host(tmp_path: Path) -> LabHost:
    return LabHost(1, "h1", "ipmcli-h1", "10.254.0.2", 24, "1gbit", tmp_path / "h1",
                   tmp_path / "h1.mnt", tmp_path / "h1.uts")


def test_up_uses_the_default_link(conf_file: str, root: None, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Any, ...]] = []

    def up(self: Lab, n: int, link: str | None) -> list[LabHost]:
        calls.append((self.prefix, self.dir, n, link))
        return [_host(tmp_path)]
    monkeypatch.setattr(Lab, "up", up)
    assert cli.main(["--config-file", conf_file, "up", "--hosts", "1"]) == 0
    assert calls == [("ipmcli", tmp_path / "state" / "ipmcli", 1, "1gbit")]
    assert "10.254.0.2/24" in capsys.readouterr().out
    calls.clear()
    assert cli.main(["--config-file", conf_file, "--prefix", "other", "up", "--hosts", "2",
                     "--link", "none"]) == 0
    assert calls == [("other", tmp_path / "state" / "other", 2, None)]


@pytest.mark.parametrize("args", [["up", "--hosts", "0"], ["up", "--hosts", "2",
                                                           "--link", "fast"],
                                  ["exec", "h1"], ["exec", "h1", "--"],
                                  ["--prefix", "Bad", "status"]])
def test_usage_errors(conf_file: str, root: None, monkeypatch: pytest.MonkeyPatch,
                      args: list[str]) -> None:
    monkeypatch.setattr(Lab, "up", lambda *a: pytest.fail("must not run"))
    assert cli.main(["--config-file", conf_file, *args]) == 2


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["up"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(args)
        assert exc.value.code == 2


def test_root_is_required_except_for_status(conf_file: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["--config-file", conf_file, "down"]) == 1
    assert "needs root" in capsys.readouterr().err
    assert cli.main(["--config-file", conf_file, "status"]) == 0
    assert "ipmcli: down" in capsys.readouterr().out


def test_lab_errors_exit_1(conf_file: str, root: None, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    def up(self: Lab, n: int, link: str | None) -> list[LabHost]:
        raise LabError("lab ipmcli is already up")
    monkeypatch.setattr(Lab, "up", up)
    assert cli.main(["--config-file", conf_file, "up", "--hosts", "1"]) == 1
    assert "ipmigrate-lab: lab ipmcli is already up" in capsys.readouterr().err


def test_down_exit_code_tells_about_leftovers(conf_file: str, root: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    reports = [DownReport(namespaces=["ipmcli-h1"]),
               DownReport(leftovers=["process 7 did not die"])]
    monkeypatch.setattr(Lab, "down", lambda self: reports.pop(0))
    assert cli.main(["--config-file", conf_file, "down"]) == 0
    assert cli.main(["--config-file", conf_file, "down"]) == 1


def test_status_json(conf_file: str, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Lab, "status", lambda self: LabStatus("ipmcli", "/x", True, "n"))
    assert cli.main(["--config-file", conf_file, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prefix"] == "ipmcli"


def test_exec_replaces_itself_with_the_command_in_the_host(
        conf_file: str, root: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path)
    monkeypatch.setattr(Lab, "host", lambda self, ref: host if ref == "h1" else None)
    execs: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execvp", lambda f, argv: execs.append(argv))
    cli.main(["--config-file", conf_file, "exec", "h1", "--", "ip", "-br", "addr"])
    assert execs == [host.enter_command(["ip", "-br", "addr"])]
