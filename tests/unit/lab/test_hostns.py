"""Inside a lab host: mountinfo parsing, the namespace set-up and FUSE clean-up
(mount system calls mocked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova_ipmigrate.lab import hostns

MOUNTINFO = """\
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
43 23 0:40 / /sys/fs/fuse/connections rw,relatime - fusectl fusectl rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
44 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw
71 44 0:4 net:[4026532177] /run/netns/ipm-h1 rw - nsfs nsfs rw
72 44 0:4 net:[4026532246] /run/netns/ipm-sw rw - nsfs nsfs rw
80 27 0:55 / /var/lib/ipm/hosts/h1/memfs rw,nosuid,nodev - fuse.ipmigrate-memfs memfs rw
81 80 0:56 / /var/lib/ipm/hosts/h1/memfs/inner rw - fuse memfs rw
82 27 0:57 / /srv/other\\040mount rw - fuse.other x rw
83 27 0:58 / /var/lib/ipm/hosts/h10/memfs rw - fuse x rw
"""


def test_parse_mountinfo() -> None:
    entries = hostns.parse_mountinfo(MOUNTINFO + "garbage line\n")
    assert len(entries) == 12
    sysfs = entries[0]
    assert (sysfs.mount_id, sysfs.parent_id, sysfs.dev, sysfs.mountpoint, sysfs.fstype) == (
        23, 27, (0, 22), "/sys", "sysfs")
    assert entries[5].fstype == "ext4"  # optional fields ("shared:1") are skipped
    assert entries[10].mountpoint == "/srv/other mount"
    assert [e.is_fuse for e in entries[8:]] == [True, True, True, True]
    assert not entries[3].is_fuse  # fusectl is not a FUSE mount


def test_fuse_mounts_under_roots_deepest_first() -> None:
    entries = hostns.parse_mountinfo(MOUNTINFO)
    found = hostns.fuse_mounts_under(entries, ["/var/lib/ipm/hosts/h1", "/run"])
    assert [e.mountpoint for e in found] == ["/var/lib/ipm/hosts/h1/memfs/inner",
                                            "/var/lib/ipm/hosts/h1/memfs"]


class FakeSys:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, mountinfo: str) -> None:
        self.calls: list[tuple[object, ...]] = []
        monkeypatch.setattr(hostns, "_own_mounts",
                            lambda: hostns.parse_mountinfo(mountinfo))
        monkeypatch.setattr(hostns.syscalls, "mount",
                            lambda *a: self.calls.append(("mount", *a)))
        monkeypatch.setattr(hostns.syscalls, "umount2",
                            lambda *a: self.calls.append(("umount2", *a)))


def test_remount_sysfs_keeps_the_mounts_below_sys(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    fake = FakeSys(monkeypatch, MOUNTINFO)
    new = tmp_path / ".sysfs-x"
    (new / "fs" / "cgroup").mkdir(parents=True)  # fs/fuse/connections absent: skipped
    monkeypatch.setattr(hostns.tempfile, "mkdtemp", lambda **kw: str(new))
    monkeypatch.setattr(hostns.os, "rmdir", lambda path: fake.calls.append(("rmdir", path)))
    hostns.remount_sysfs()
    flags = hostns.MS_NOSUID | hostns.MS_NODEV | hostns.MS_NOEXEC
    assert fake.calls == [
        ("mount", "sysfs", str(new), "sysfs", flags, None),
        ("mount", "/sys/fs/cgroup", f"{new}/fs/cgroup", "", hostns.MS_BIND | hostns.MS_REC,
         None),
        ("umount2", "/sys", hostns.syscalls.MNT_DETACH),
        ("mount", str(new), "/sys", "", hostns.MS_MOVE, None),
        ("rmdir", str(new)),
    ]


def test_drop_inherited_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSys(monkeypatch, MOUNTINFO)
    hostns.drop_inherited_mounts()
    assert fake.calls == [("umount2", path, hostns.syscalls.MNT_DETACH) for path in [
        "/var/lib/ipm/hosts/h1/memfs/inner", "/var/lib/ipm/hosts/h10/memfs",
        "/var/lib/ipm/hosts/h1/memfs", "/run/netns/ipm-sw", "/run/netns/ipm-h1",
        "/srv/other mount"]]


def test_unmount_fuse_aborts_by_device_minor_then_unmounts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSys(monkeypatch, MOUNTINFO)
    events: list[tuple[str, object]] = []

    def abort(conn: int) -> bool:
        events.append(("abort", conn))
        return True
    monkeypatch.setattr(hostns.mnt, "abort_connection", abort)
    monkeypatch.setattr(hostns, "force_unmount",
                        lambda path: events.append(("unmount", str(path))))
    done = hostns.unmount_fuse(["/var/lib/ipm/hosts/h1"])
    assert done == ["/var/lib/ipm/hosts/h1/memfs/inner", "/var/lib/ipm/hosts/h1/memfs"]
    assert events == [("abort", 56), ("unmount", "/var/lib/ipm/hosts/h1/memfs/inner"),
                      ("abort", 55), ("unmount", "/var/lib/ipm/hosts/h1/memfs")]


def test_init_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    steps: list[str] = []
    monkeypatch.setattr(hostns.socket, "sethostname", lambda name: steps.append(name))
    monkeypatch.setattr(hostns, "drop_inherited_mounts", lambda: steps.append("nsfs"))
    monkeypatch.setattr(hostns, "bind_run", lambda d: steps.append(f"run {d}"))
    monkeypatch.setattr(hostns, "remount_sysfs", lambda: steps.append("sysfs"))
    assert hostns.main(["init", "--hostname", "ipm-h2", "--run-dir", str(tmp_path)]) == 0
    # /run first: the new sysfs is mounted in a directory of the host's own /run
    assert steps == ["ipm-h2", "nsfs", f"run {tmp_path}", "sysfs"]


def test_main_reports_errors(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    def fail(roots: list[str]) -> list[str]:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(hostns, "unmount_fuse", fail)
    assert hostns.main(["unmount-fuse", "/x"]) == 1
    assert "unmount-fuse" in capsys.readouterr().err
