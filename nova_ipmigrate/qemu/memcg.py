"""Memory cgroups for QEMU processes (cgroup v1 or v2, detected).

This module owns putting a QEMU into its own memory cgroup and driving that
cgroup: usage, limits and forced reclaim.  Reclaim matters for testing the
data plane: memcg reclaim (unlike ``drop_caches``) drops clean pages of a
file-backed guest RAM mapping, so it exercises the page-in path.

The hierarchy is found from ``/proc/mounts``: a v1 ``cgroup`` mount with the
``memory`` option wins; otherwise a ``cgroup2`` mount whose
``cgroup.controllers`` lists ``memory``.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

__all__ = ["CgroupError", "MemoryCgroup", "find_memory_hierarchy"]


class CgroupError(RuntimeError):
    """No usable memory cgroup hierarchy, or an operation on it failed."""


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def find_memory_hierarchy(mounts_file: Path = Path("/proc/mounts")) -> tuple[Path, int]:
    """Return (mount root, cgroup version) of the memory controller."""
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError as exc:
        raise CgroupError(f"cannot read {mounts_file}: {exc}") from exc
    v2: list[Path] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        mnt, fstype, opts = Path(_unescape_mount_field(fields[1])), fields[2], fields[3].split(",")
        if fstype == "cgroup" and "memory" in opts:
            return mnt, 1
        if fstype == "cgroup2":
            v2.append(mnt)
    for mnt in v2:
        try:
            controllers = (mnt / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" in controllers:
            return mnt, 2
    raise CgroupError("no memory cgroup controller mounted (neither a v1 'memory' hierarchy "
                      "nor a cgroup2 mount offering 'memory')")


class MemoryCgroup:
    """A memory cgroup called ``name`` (may contain '/') below the hierarchy root.

    Created on construction; :meth:`destroy` (or leaving the ``with`` block)
    moves any remaining processes to the parent and removes it.
    """

    def __init__(self, name: str, root: Path | None = None, version: int | None = None,
                 mounts_file: Path = Path("/proc/mounts")) -> None:
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"bad cgroup name {name!r}")
        if root is None:
            root, detected = find_memory_hierarchy(mounts_file)
            version = version or detected
        self.root = Path(root)
        self.version = version or 1
        self.name = name
        self.path = self.root / name
        if self.version == 2:
            self._enable_memory_controller()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {self.path}: {exc}") from exc

    # ---------------------------------------------------------- files

    @property
    def procs_file(self) -> Path:
        """Writing a pid here moves that process (all its threads) in."""
        return self.path / "cgroup.procs"

    def _file(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version == 1 else v2)

    def _enable_memory_controller(self) -> None:
        # v2 only offers memory.* files if every ancestor delegates it.
        ancestors = [self.root, *[self.root / Path(*Path(self.name).parts[:i])
                                  for i in range(1, len(Path(self.name).parts))]]
        for anc in ancestors:
            anc.mkdir(exist_ok=True)
            ctl = anc / "cgroup.subtree_control"
            try:
                if "memory" not in ctl.read_text().split():
                    ctl.write_text("+memory")
            except OSError as exc:
                raise CgroupError(f"cannot enable the memory controller in {ctl}: {exc}") from exc

    # ---------------------------------------------------------- operations

    def add(self, pid: int) -> None:
        """Move process ``pid`` into this cgroup."""
        try:
            self.procs_file.write_text(f"{pid}\n")
        except OSError as exc:
            raise CgroupError(f"cannot add pid {pid} to {self.path}: {exc}") from exc

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.procs_file.read_text().split()]
        except FileNotFoundError:
            return []

    def usage_bytes(self) -> int:
        """Current charge (v1 memory.usage_in_bytes, v2 memory.current)."""
        return int(self._file("memory.usage_in_bytes", "memory.current").read_text())

    def set_limit(self, limit_bytes: int | None) -> None:
        """Hard limit (v1 memory.limit_in_bytes, v2 memory.max); None = unlimited."""
        if self.version == 1:
            value = "-1" if limit_bytes is None else str(limit_bytes)
        else:
            value = "max" if limit_bytes is None else str(limit_bytes)
        self._file("memory.limit_in_bytes", "memory.max").write_text(value)

    def force_reclaim(self) -> int:
        """Reclaim as much as the kernel will; return the bytes freed."""
        before = self.usage_bytes()
        try:
            if self.version == 1:
                self._file("memory.force_empty", "").write_text("0")
            else:
                self._file("", "memory.reclaim").write_text(str(1 << 50))
        except OSError as exc:
            # EAGAIN (v2) / EBUSY (v1): could not reclaim everything, which
            # is expected while the guest keeps touching memory.
            if exc.errno not in (errno.EAGAIN, errno.EBUSY):
                raise CgroupError(f"reclaim in {self.path} failed: {exc}") from exc
        return max(0, before - self.usage_bytes())

    def destroy(self, timeout: float = 5.0) -> None:
        """Move remaining processes to the parent, then remove the cgroup."""
        if not self.path.exists():
            return
        parent = self.path.parent
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.pids():
                try:
                    (parent / "cgroup.procs").write_text(f"{pid}\n")
                except OSError as exc:
                    if exc.errno != errno.ESRCH:  # exited meanwhile: fine
                        raise CgroupError(
                            f"cannot move pid {pid} out of {self.path}: {exc}") from exc
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                # EBUSY while zombies or racing forks are still charged here.
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise CgroupError(f"cannot remove {self.path}: {exc}") from exc
                time.sleep(0.05)

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"MemoryCgroup({self.path}, v{self.version})"
