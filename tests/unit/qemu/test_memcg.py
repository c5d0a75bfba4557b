"""MemoryCgroup against a fake cgroup filesystem in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova_ipmigrate.qemu.memcg import CgroupError, MemoryCgroup, find_memory_hierarchy


def test_find_v1(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
    assert find_memory_hierarchy(mounts) == (Path("/sys/fs/cgroup/memory"), 1)


def test_find_v2(tmp_path: Path) -> None:
    no_mem = tmp_path / "a"
    with_mem = tmp_path / "b c"
    for d, ctl in ((no_mem, "hugetlb"), (with_mem, "cpu io memory pids")):
        d.mkdir()
        (d / "cgroup.controllers").write_text(ctl + "\n")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {no_mem} cgroup2 rw 0 0\n"
                      f"cgroup2 {str(with_mem).replace(' ', chr(92) + '040')} cgroup2 rw 0 0\n")
    assert find_memory_hierarchy(mounts) == (with_mem, 2)


def test_find_none(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(CgroupError, match="no memory cgroup"):
        find_memory_hierarchy(mounts)


def test_v1_operations(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("")
    cg = MemoryCgroup("ipm/test", root=tmp_path, version=1)
    assert cg.path == tmp_path / "ipm" / "test" and cg.path.is_dir()
    (cg.path / "memory.usage_in_bytes").write_text("4096\n")
    (cg.path / "cgroup.procs").write_text("")
    cg.add(1234)
    assert cg.pids() == [1234]
    assert cg.usage_bytes() == 4096
    cg.set_limit(1 << 20)
    assert (cg.path / "memory.limit_in_bytes").read_text() == str(1 << 20)
    cg.set_limit(None)
    assert (cg.path / "memory.limit_in_bytes").read_text() == "-1"
    assert cg.force_reclaim() == 0  # fake fs: usage does not change
    assert (cg.path / "memory.force_empty").read_text() == "0"
    # A real cgroupfs removes its control files itself; emulate that.
    for f in cg.path.iterdir():
        f.unlink()
    with cg:
        pass
    assert not cg.path.exists()
    cg.destroy()  # idempotent


def test_v2_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    cg = MemoryCgroup("vm1", root=tmp_path, version=2)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    (cg.path / "memory.current").write_text("8192\n")
    assert cg.usage_bytes() == 8192
    cg.set_limit(None)
    assert (cg.path / "memory.max").read_text() == "max"
    cg.force_reclaim()
    assert int((cg.path / "memory.reclaim").read_text()) > 1 << 40


def test_bad_names(tmp_path: Path) -> None:
    for name in ("", "/abs", "../escape"):
        with pytest.raises(ValueError):
            MemoryCgroup(name, root=tmp_path, version=1)
