"""libvirt's qemu hook: tells this host's agent what its domains do.

Installed as ``/etc/libvirt/hooks/qemu.d/50-nova-ipmigrate`` (a script that runs
``python -m nova_ipmigrate.hooks.libvirt_qemu --control-socket PATH "$@"``; see
:func:`hook_script`) by ``python -m nova_ipmigrate.hooks.libvirt_qemu install
--control-socket PATH``; libvirtd reads its hooks when it starts. libvirt calls it
as ``qemu.d/X <domain> <op> <sub-op> <extra>`` with the domain XML on stdin,
synchronously. What it does:

* ``start begin``: QEMU is about to start (also for an incoming migration; the
  domain's memory directory exists, QEMU has not opened the RAM file): the agent
  learns the domain's UUID, id, name and extra QMP monitor, and for an expected
  incoming main-host move creates the RAM file at the path the new id gives.
* ``started begin``: after libvirt's ``migrate-incoming``, before the source
  sends anything: the agent sets ``x-ignore-shared`` on an incoming domain.
* ``stopped end``: the agent forgets the domain.
* ``migrate begin`` (at the destination, before the incoming domain is defined; the
  XML libvirt is to use comes back on stdout): for a split domain the memory backing
  is set back to a shared file without preallocation or discard (Nova rewrites it
  for the destination's ``[libvirt] file_backed_memory``, see :func:`migrate_xml`);
  any other XML passes through unchanged.

A refusal by the agent fails the hook (exit 1), so libvirt fails that start and
the migration (the source goes on). An agent that cannot be reached is logged
and ignored for domains it does not know of: the hook must not break VMs that
are not split-memory instances.
"""

from __future__ import annotations

import argparse
import errno
import re
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
#: libvirt shortens a domain's name to this many characters in its directories
SHORT_NAME = 20


def ram_file_path(domain_id: int, name: str) -> str:
    """The RAM file libvirt gives a domain, relative to ``memory_backing_dir``
    (the agent, which serves it, and the compute driver, which hands it to the
    engine, both name it so)."""
    return f"libvirt/qemu/{domain_id}-{name[:SHORT_NAME]}/pc.ram"


#: the hook's file name in libvirt's hooks/qemu.d
HOOK_NAME = "50-nova-ipmigrate"
#: a domain's <memoryBacking> element in the XML text
_BACKING = re.compile(rb"<memoryBacking\b[^>]*?(?:/>|>.*?</memoryBacking\s*>)", re.S)
#: what Nova sets or drops in <memoryBacking> for [libvirt] file_backed_memory
_FILE_BACKED = ("source", "access", "allocation", "discard")


def parse_domain(xml: str | bytes) -> dict[str, Any]:
    """UUID, name, id (None if absent) and extra QMP socket of a domain XML."""
    root = ET.fromstring(xml)
    did = root.get("id") or ""
    out: dict[str, Any] = {"vm": (root.findtext("uuid") or "").strip(),
                           "name": (root.findtext("name") or "").strip(),
                           "id": int(did) if did.isdigit() else None, "qmp": None}
    args = [a.get("value", "") for a in root.iter(f"{QEMU_NS}arg")]
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-qmp" and value.startswith("unix:"):
            out["qmp"] = value[len("unix:"):].split(",", 1)[0]
            break
    return out


def migrate_xml(xml: bytes) -> bytes:
    """The XML an incoming domain is to be started with (the ``migrate`` operation).

    Nova's driver rewrites a migrating domain's ``<memoryBacking>`` for the
    destination's ``[libvirt] file_backed_memory``: without it, no file source and
    no shared access (QEMU's RAM would not be the memfs file); with it, also
    ``<allocation mode='immediate'/>`` (QEMU preallocates: every page faulted onto
    the new main host) and ``<discard/>``. A split domain (one with the extra
    ``-qmp unix:`` monitor) gets a shared file back and neither; its other
    ``<memoryBacking>`` children and the rest of the XML are kept as they are.
    Anything else is returned unchanged. A split domain whose XML has no single
    ``<memoryBacking>`` to rewrite is a ``ValueError`` (the migration fails).
    """
    try:
        root = ET.fromstring(xml)
        split = parse_domain(xml)["qmp"] is not None
    except (ET.ParseError, ValueError):
        return xml
    if not split:
        return xml
    backing = root.find("memoryBacking")
    children = list(backing) if backing is not None else []
    if not any(c.tag in ("allocation", "discard") for c in children) \
            and any(c.tag == "source" and c.get("type") == "file" for c in children) \
            and any(c.tag == "access" and c.get("mode") == "shared" for c in children):
        return xml
    kept = [c for c in children if c.tag not in _FILE_BACKED]
    for c in kept:
        c.tail = None
    new = b"<memoryBacking>" + b"".join(b"\n    " + ET.tostring(c) for c in kept) + \
        b"\n    <source type='file'/>\n    <access mode='shared'/>\n  </memoryBacking>"
    found = list(_BACKING.finditer(xml))
    if backing is None and not found:
        end = xml.rfind(b"</domain>")
        if end < 0:
            raise ValueError("no </domain> to add a <memoryBacking> before")
        return xml[:end] + b"  " + new + b"\n" + xml[end:]
    if backing is None or len(found) != 1:
        raise ValueError(f"{len(found)} <memoryBacking> elements in the XML text, "
                         f"{0 if backing is None else 1} in the domain: not rewritten")
    return xml[:found[0].start()] + new + xml[found[0].end():]


def hook_script(python: str, control_socket: Path) -> str:
    """The executable libvirt runs (only the operations the agent needs start Python)."""
    cmd = " ".join(shlex.quote(a) for a in (python, "-m", "nova_ipmigrate.hooks.libvirt_qemu",
                                            "--control-socket", str(control_socket)))
    return f"""#!/bin/sh
# nova-ipmigrate: libvirt qemu hook (written by the installer; see
# nova_ipmigrate/hooks/libvirt_qemu.py)
case "$2" in
  start|started|stopped|migrate) exec {cmd} "$@" ;;
  *) exit 0 ;;
esac
"""


def install(directory: Path, control_socket: Path, python: str | None = None) -> Path:
    """Write the hook into libvirt's ``hooks/qemu.d`` (libvirtd reads it when it starts)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HOOK_NAME
    path.write_text(hook_script(python or sys.executable, control_socket))
    path.chmod(0o755)
    return path


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["install"]:
        inst = argparse.ArgumentParser(prog="python -m nova_ipmigrate.hooks.libvirt_qemu "
                                            "install")
        inst.add_argument("install")
        inst.add_argument("--control-socket", type=Path, required=True,
                          help="the agent's [agent] control_socket")
        inst.add_argument("--hooks-dir", type=Path, default=Path("/etc/libvirt/hooks/qemu.d"))
        a = inst.parse_args(args_in)
        print(f"installed {install(a.hooks_dir, a.control_socket)}; restart libvirtd")
        return 0
    parser = argparse.ArgumentParser(prog="nova-ipmigrate libvirt hook")
    parser.add_argument("--control-socket", type=Path, required=True)
    parser.add_argument("domain")
    parser.add_argument("op")
    parser.add_argument("subop", nargs="?", default="-")
    parser.add_argument("extra", nargs="?", default="-")
    args = parser.parse_args(args_in)
    from nova_ipmigrate.memfs.control import ControlError, call

    if args.op == "migrate":
        data = sys.stdin.buffer.read()
        try:
            data = migrate_xml(data)
        except ValueError as exc:
            print(f"nova-ipmigrate hook: the incoming XML of {args.domain}: {exc}",
                  file=sys.stderr)
            return 1
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    xml = sys.stdin.read()
    calls = {("start", "begin"): "domain_start", ("started", "begin"): "domain_started",
             ("stopped", "end"): "domain_stopped"}
    op = calls.get((args.op, args.subop))
    if op is None:
        return 0
    try:
        dom = parse_domain(xml)
    except (ET.ParseError, ValueError) as exc:
        print(f"nova-ipmigrate hook: cannot parse the XML of {args.domain}: {exc}",
              file=sys.stderr)
        return 0
    try:
        call(args.control_socket, op, timeout=60, **dom)
    except ControlError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            print(f"nova-ipmigrate hook: no agent ({exc}); {args.domain} not tracked",
                  file=sys.stderr)
            return 0
        print(f"nova-ipmigrate hook: {op} of {args.domain} refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
