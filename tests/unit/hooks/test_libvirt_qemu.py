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


def _run(path: Path, *args: str, xml: str | bytes = "",
         monkeypatch: pytest.MonkeyPatch) -> int:
    data = xml.encode() if isinstance(xml, str) else xml
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
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
    """A split domain whose RAM is already a shared file: unchanged."""
    assert _run(tmp_path / "none.sock", "migrate", "begin", "-", xml=_xml(),
                monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out == _xml()


NOVA_BACKING = ("<memoryBacking><source type=\"file\"/><access mode=\"shared\"/>"
                "<allocation mode=\"immediate\"/><discard/></memoryBacking>")


def _nova_xml(backing: str | None, split: bool = True) -> str:
    """The lab's domain XML with Nova's memoryBacking (None: none at all)."""
    xml = _xml()
    start, end = xml.index("  <memoryBacking>"), xml.index("</memoryBacking>\n") + 17
    xml = xml[:start] + (f"  {backing}\n" if backing is not None else "") + xml[end:]
    if not split:
        xml = xml.replace("<qemu:arg value='-qmp'/>", "<qemu:arg value='-S'/>")
    return xml


def _backing(xml: str) -> list[tuple[str, dict[str, str]]]:
    import xml.etree.ElementTree as ET

    backings = ET.fromstring(xml).findall("memoryBacking")
    assert len(backings) == 1
    return [(c.tag, dict(c.attrib)) for c in backings[0]]


SHARED_FILE = [("source", {"type": "file"}), ("access", {"mode": "shared"})]


@pytest.mark.parametrize(("backing", "expected"), [
    # destination with [libvirt] file_backed_memory: prealloc and discard added
    (NOVA_BACKING, SHARED_FILE),
    # without it: Nova dropped source and access
    ("<memoryBacking/>", SHARED_FILE),
    ("<memoryBacking></memoryBacking>", SHARED_FILE),
    # other children stay
    ("<memoryBacking><nosharepages/><allocation mode='immediate'/></memoryBacking>",
     [("nosharepages", {}), *SHARED_FILE]),
    # no memoryBacking at all
    (None, SHARED_FILE),
])
def test_migrate_gives_a_split_domain_its_shared_file_back(
        backing: str | None, expected: list[Any]) -> None:
    xml = _nova_xml(backing)
    out = libvirt_qemu.migrate_xml(xml.encode()).decode()
    assert _backing(out) == expected
    assert libvirt_qemu.parse_domain(out) == libvirt_qemu.parse_domain(xml)
    # the rest of the XML is the same text
    if backing is None:
        head, tail = xml.rsplit("</domain>", 1)
        tail = "</domain>" + tail
    else:
        head, tail = xml.split(backing, 1)
    new = out[len(head):len(out) - len(tail)]
    assert out.startswith(head) and out.endswith(tail)
    assert new.strip().startswith("<memoryBacking>") and new.strip().endswith(
        "</memoryBacking>")
    # a second pass changes nothing
    assert libvirt_qemu.migrate_xml(out.encode()).decode() == out


def test_migrate_hook_rewrites_a_split_domain(tmp_path: Path,
                                              capsysbinary: pytest.CaptureFixture[bytes],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    xml = _nova_xml(NOVA_BACKING)
    assert _run(tmp_path / "none.sock", "migrate", "begin", "-", xml=xml,
                monkeypatch=monkeypatch) == 0
    out = capsysbinary.readouterr().out.decode()
    assert _backing(out) == SHARED_FILE and "allocation" not in out and "discard" not in out


@pytest.mark.parametrize("xml", [
    _nova_xml(NOVA_BACKING, split=False).encode(),       # not a split domain
    _nova_xml("<memoryBacking/>", split=False).encode(),
    b"<domain type='kvm'>\r\n  <name>x</name>\r\n  <memoryBacking><allocation "
    b"mode='immediate'/></memoryBacking>\r\n</domain>\r\n",
    "<domain type='kvm'><name>caf\u00e9</name><memoryBacking><discard/></memoryBacking>"
    "</domain>".encode(),
    b"not xml at all <memoryBacking/>",
])
def test_migrate_passes_other_domains_through_byte_for_byte(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes],
        monkeypatch: pytest.MonkeyPatch, xml: bytes) -> None:
    assert libvirt_qemu.migrate_xml(xml) is xml
    assert _run(tmp_path / "none.sock", "migrate", "begin", "-", xml=xml,
                monkeypatch=monkeypatch) == 0
    assert capsysbinary.readouterr().out == xml


def test_migrate_refuses_a_split_domain_it_cannot_rewrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    xml = _nova_xml(NOVA_BACKING).replace(
        "<devices>", "<!-- <memoryBacking/> --><devices>", 1)
    with pytest.raises(ValueError, match="2 <memoryBacking> elements"):
        libvirt_qemu.migrate_xml(xml.encode())
    assert _run(tmp_path / "none.sock", "migrate", "begin", "-", xml=xml,
                monkeypatch=monkeypatch) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "not rewritten" in captured.err


def test_hook_script(tmp_path: Path) -> None:
    """The installed script: operations not for the agent exit 0 at once,
    start/started/stopped/migrate run the module."""
    script = tmp_path / "50-nova-ipmigrate"
    script.write_text(libvirt_qemu.hook_script("/bin/echo", tmp_path / "a b.sock"))
    script.chmod(0o755)
    out = subprocess.run([str(script), "oracle", "migrate", "begin", "-"], input="<x/>",
                         capture_output=True, text=True, check=True)
    assert out.stdout.split()[-4:] == ["oracle", "migrate", "begin", "-"]
    out = subprocess.run([str(script), "oracle", "release", "end", "-"], input="",
                         capture_output=True, text=True, check=True)
    assert out.stdout == ""
    out = subprocess.run([str(script), "oracle", "start", "begin", "-"], input="",
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["-m", "nova_ipmigrate.hooks.libvirt_qemu",
                                  "--control-socket", f"{tmp_path}/a", "b.sock", "oracle",
                                  "start", "begin", "-"]


def test_installed_script_rewrites_and_passes_through(tmp_path: Path) -> None:
    """The script with this Python: libvirt's stdin to stdout, a split domain's
    memoryBacking rewritten, another domain's bytes unchanged."""
    script = tmp_path / "50-nova-ipmigrate"
    script.write_text(libvirt_qemu.hook_script(sys.executable, tmp_path / "none.sock"))
    script.chmod(0o755)
    run = [str(script), "oracle", "migrate", "begin", "-"]
    other = b"<domain><name>x</name>\r\n<memoryBacking><discard/></memoryBacking></domain>"
    assert subprocess.run(run, input=other, capture_output=True, check=True,
                          timeout=60).stdout == other
    out = subprocess.run(run, input=_nova_xml(NOVA_BACKING).encode(), capture_output=True,
                         check=True, timeout=60).stdout.decode()
    assert _backing(out) == SHARED_FILE


def test_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert libvirt_qemu.main(["install", "--control-socket", "/run/a.sock",
                              "--hooks-dir", str(tmp_path / "qemu.d")]) == 0
    hook = tmp_path / "qemu.d" / libvirt_qemu.HOOK_NAME
    assert hook.stat().st_mode & 0o111 and "--control-socket /run/a.sock" in hook.read_text()
    assert "restart libvirtd" in capsys.readouterr().out
