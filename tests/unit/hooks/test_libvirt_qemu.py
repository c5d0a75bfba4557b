"""The libvirt qemu hook: what it reads of the domain XML, what it asks the agent."""

from __future__ import annotations

import errno
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova_ipmigrate.hooks import libvirt_qemu
from nova_ipmigrate.lab.libvirt import domain_xml

VM = "6a1f8a52-3c3c-4b53-9c3b-000000000001"


def _xml(with_id: bool = True) -> str:
    xml = domain_xml("oracle", 256, Path("/k"), Path("/i"), "console=ttyS0", Path("/s.log"),
                     Path("/run/ipmigrate/x.qmp"), domain_uuid=VM)
    return xml.replace("<domain type='qemu'", "<domain type='qemu' id='7'", 1) if with_id else xml


def test_parse_domain() -> None:
    assert libvirt_qemu.parse_domain(_xml()) == {
        "vm": VM, "name": "oracle", "id": 7, "qmp": "/run/ipmigrate/x.qmp"}
    assert libvirt_qemu.parse_domain(_xml(with_id=False))["id"] is None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]], dict[str, Any]]]:
    """A control socket that records requests and answers ``reply``."""
    path = tmp_path / "agent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    seen: list[dict[str, Any]] = []
    reply: dict[str, Any] = {"ok": True}

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                seen.append(json.loads(f.readline()))
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, seen, reply
    srv.close()


def _run(path: Path, *args: str, xml: str = "", monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(xml))
    return libvirt_qemu.main(["--control-socket", str(path), "oracle", *args])


def test_start_and_started_tell_the_agent(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, seen, _reply = agent
    assert _run(path, "start", "begin", "-", xml=_xml(), monkeypatch=monkeypatch) == 0
    assert _run(path, "started", "begin", "-", xml=_xml(), monkeypatch=monkeypatch) == 0
    assert _run(path, "prepare", "begin", "-", xml=_xml(), monkeypatch=monkeypatch) == 0
    assert [r["op"] for r in seen] == ["domain_start", "domain_started"]
    assert seen[0]["vm"] == VM and seen[0]["id"] == 7 and seen[0]["qmp"].endswith("x.qmp")


def test_a_refusal_fails_the_hook(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _seen, reply = agent
    reply.clear()
    reply.update(error="x-ignore-shared cannot be set", errno=errno.EOPNOTSUPP)
    assert _run(path, "started", "begin", "-", xml=_xml(), monkeypatch=monkeypatch) == 1


def test_no_agent_does_not_break_other_domains(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(tmp_path / "none.sock", "start", "begin", "-", xml=_xml(),
                monkeypatch=monkeypatch) == 0


def test_migrate_passes_the_xml_through(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(tmp_path / "none.sock", "migrate", "begin", "-", xml=_xml(),
                monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out == _xml()


def test_hook_script(tmp_path: Path) -> None:
    """The installed script: migrate is a plain pass-through, others not for the agent
    exit 0 at once, start/started run the module."""
    script = tmp_path / "50-nova-ipmigrate"
    script.write_text(libvirt_qemu.hook_script("/bin/echo", tmp_path / "a b.sock"))
    script.chmod(0o755)
    out = subprocess.run([str(script), "oracle", "migrate", "begin", "-"], input="<x/>",
                         capture_output=True, text=True, check=True)
    assert out.stdout == "<x/>"
    out = subprocess.run([str(script), "oracle", "release", "end", "-"], input="",
                         capture_output=True, text=True, check=True)
    assert out.stdout == ""
    out = subprocess.run([str(script), "oracle", "start", "begin", "-"], input="",
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["-m", "nova_ipmigrate.hooks.libvirt_qemu",
                                  "--control-socket", f"{tmp_path}/a", "b.sock", "oracle",
                                  "start", "begin", "-"]


def test_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert libvirt_qemu.main(["install", "--control-socket", "/run/a.sock",
                              "--hooks-dir", str(tmp_path / "qemu.d")]) == 0
    hook = tmp_path / "qemu.d" / libvirt_qemu.HOOK_NAME
    assert hook.stat().st_mode & 0o111 and "--control-socket /run/a.sock" in hook.read_text()
    assert "restart libvirtd" in capsys.readouterr().out
