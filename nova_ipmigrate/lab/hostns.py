"""The inside of a lab host: setting up its namespaces, and clearing its FUSE mounts.

The lab (:mod:`nova_ipmigrate.lab.hosts`) runs this module as a command inside a
host (``python -m nova_ipmigrate.lab.hostns``):

``init``
    once, as the first process of the host's new mount and UTS namespaces (it is
    already in the host's network namespace). Sets the hostname; detaches the
    namespace files (``nsfs`` mounts, such as ``/run/netns/*``) and the FUSE
    mounts that the copied mount table holds, so that a host keeps no other
    host's namespace and no other memfs mount alive (detached, not aborted: they
    belong to others); binds the host's own run directory on ``/run`` (private
    ``/run/ipmigrate``, ``/run/libvirt``, pid files and sockets for its agent and
    libvirtd); and mounts a sysfs of the host's network namespace on ``/sys`` (as
    ``ip netns exec`` does), keeping the mounts below ``/sys`` (cgroups, fusectl).

``unmount-fuse ROOT...``
    in a host's mount namespace during ``down``: aborts and lazily unmounts every
    FUSE mount below the given roots, so that no process of a crashed lab can hang
    on a mount whose daemon is gone.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nova_ipmigrate.lab.memfsd import force_unmount
from nova_ipmigrate.memfs import mount as mnt
from nova_ipmigrate.memfs import syscalls

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000

#: directories every host gets in its private /run
RUN_SUBDIRS = ("ipmigrate", "lock")


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/<pid>/mountinfo``."""

    mount_id: int
    parent_id: int
    dev: tuple[int, int]
    mountpoint: str
    fstype: str

    @property
    def is_fuse(self) -> bool:
        return self.fstype in ("fuse", "fuseblk") or self.fstype.startswith("fuse.")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        major, minor = fields[2].split(":")
        entries.append(MountEntry(int(fields[0]), int(fields[1]), (int(major), int(minor)),
                                  _unescape(fields[4]), fields[sep + 1]))
    return entries


def _own_mounts() -> list[MountEntry]:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def _deepest_first(entries: Iterable[MountEntry]) -> list[MountEntry]:
    """So that a mount goes before the one it lies on."""
    return sorted(entries, key=lambda e: (e.mountpoint.count("/"), e.mountpoint),
                  reverse=True)


def _detach(path: str) -> None:
    try:
        syscalls.umount2(path, syscalls.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise


def drop_inherited_mounts() -> None:
    for entry in _deepest_first(e for e in _own_mounts() if e.fstype == "nsfs" or e.is_fuse):
        _detach(entry.mountpoint)


def bind_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    syscalls.mount(str(run_dir), "/run", "", MS_BIND, None)
    for name in RUN_SUBDIRS:
        os.makedirs(f"/run/{name}", exist_ok=True)
    os.chmod("/run/lock", 0o1777)


def remount_sysfs() -> None:
    """A sysfs of this network namespace on /sys, with the mounts that were below /sys."""
    mounts = _own_mounts()
    sys_mounts = [e for e in mounts if e.mountpoint == "/sys"]
    if not sys_mounts:
        return
    top = sys_mounts[-1].mount_id  # the last one mounted on /sys is the visible one
    children = [e.mountpoint for e in mounts if e.parent_id == top]
    new = tempfile.mkdtemp(prefix=".sysfs-", dir="/run")
    syscalls.mount("sysfs", new, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for child in children:
        target = new + child[len("/sys"):]
        if os.path.isdir(target):
            syscalls.mount(child, target, "", MS_BIND | MS_REC, None)
    syscalls.umount2("/sys", syscalls.MNT_DETACH)
    syscalls.mount(new, "/sys", "", MS_MOVE, None)
    os.rmdir(new)


def init(hostname: str, run_dir: Path) -> None:
    socket.sethostname(hostname)
    drop_inherited_mounts()
    bind_run(run_dir)
    remount_sysfs()


def fuse_mounts_under(entries: Sequence[MountEntry], roots: Sequence[str]) -> list[MountEntry]:
    def under(path: str) -> bool:
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)

    return _deepest_first(e for e in entries if e.is_fuse and under(e.mountpoint))


def unmount_fuse(roots: Sequence[str]) -> list[str]:
    """Abort (fusectl, by the mount's device minor: no request to a hung daemon) and
    lazily unmount every FUSE mount below ``roots``; the paths unmounted."""
    done = []
    for entry in fuse_mounts_under(_own_mounts(), roots):
        mnt.abort_connection(entry.dev[1])
        force_unmount(Path(entry.mountpoint))
        done.append(entry.mountpoint)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nova_ipmigrate.lab.hostns",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="set up a new host's mount and UTS namespaces")
    p_init.add_argument("--hostname", required=True)
    p_init.add_argument("--run-dir", type=Path, required=True)
    p_fuse = sub.add_parser("unmount-fuse", help="abort and unmount FUSE mounts below ROOTs")
    p_fuse.add_argument("roots", nargs="+")
    args = ap.parse_args(argv)
    try:
        if args.command == "init":
            init(args.hostname, args.run_dir)
        else:
            for path in unmount_fuse(args.roots):
                print(path, flush=True)
    except OSError as exc:
        print(f"hostns {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
