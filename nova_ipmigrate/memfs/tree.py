"""The namespace of memfs: directories and RAM files, with FUSE lookup counts.

libvirt lays RAM files out as ``<dir>/libvirt/qemu/<id>-<name>/pc.ram`` and
removes the domain directory with ``rm -r`` when the domain stops; QEMU creates
and sizes the file. This module owns names and attributes only; the content of
a RAM file is its :class:`~nova_ipmigrate.memfs.ramfile.RamFile`.
"""

from __future__ import annotations

import errno
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nova_ipmigrate.memfs.protocol import ROOT_ID

if TYPE_CHECKING:
    from nova_ipmigrate.memfs.ramfile import RamFile


class FsError(Exception):
    """An operation refused with an errno."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


@dataclass(eq=False)
class Inode:
    nodeid: int
    mode: int
    uid: int = 0
    gid: int = 0
    parent: Inode | None = None
    name: str = ""
    children: dict[str, Inode] = field(default_factory=dict)
    nlookup: int = 0
    nlink: int = 1
    atime: float = field(default_factory=time.time)
    mtime: float = field(default_factory=time.time)
    ctime: float = field(default_factory=time.time)
    ram: RamFile | None = None
    #: a RAM file prepared by the agent (control ``create``): its pages may be on
    #: other hosts, so only the agent may remove or replace it (unlink and rename
    #: through the mount get EBUSY, e.g. libvirt's removal of a stopped domain's
    #: memory directory)
    pinned: bool = False

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def size(self) -> int:
        if self.is_dir:
            return 4096
        return self.ram.size if self.ram else 0

    def path(self) -> str | None:
        """Path from the root, or None once unlinked."""
        parts: list[str] = []
        node: Inode | None = self
        while node is not None and node.nodeid != ROOT_ID:
            if node.parent is None:
                return None
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))


class Tree:
    """Inodes by node id and by name. Thread-safe through one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._next = ROOT_ID + 1
        root = Inode(ROOT_ID, stat.S_IFDIR | 0o755, nlink=2)
        root.nlookup = 1
        self.nodes: dict[int, Inode] = {ROOT_ID: root}

    @property
    def root(self) -> Inode:
        return self.nodes[ROOT_ID]

    def get(self, nodeid: int) -> Inode:
        node = self.nodes.get(nodeid)
        if node is None:
            raise FsError(errno.ESTALE, f"unknown node {nodeid}")
        return node

    def dir(self, nodeid: int) -> Inode:
        node = self.get(nodeid)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    def child(self, parent: Inode, name: str) -> Inode:
        node = parent.children.get(name)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def add(self, parent: Inode, name: str, mode: int, uid: int, gid: int) -> Inode:
        if name in parent.children:
            raise FsError(errno.EEXIST)
        node = Inode(self._next, mode, uid, gid, parent=parent, name=name,
                     nlink=2 if stat.S_ISDIR(mode) else 1)
        self._next += 1
        self.nodes[node.nodeid] = node
        parent.children[name] = node
        if node.is_dir:
            parent.nlink += 1
        parent.mtime = parent.ctime = time.time()
        return node

    def detach(self, parent: Inode, name: str) -> Inode:
        node = self.child(parent, name)
        del parent.children[name]
        if node.is_dir:
            parent.nlink -= 1
        node.parent = None
        node.nlink = 0
        parent.mtime = parent.ctime = time.time()
        self.maybe_drop(node)
        return node

    def rename(self, parent: Inode, name: str, newparent: Inode, newname: str,
               noreplace: bool) -> None:
        node = self.child(parent, name)
        target = newparent.children.get(newname)
        if target is node:
            return
        if node.pinned or (target is not None and target.pinned):
            raise FsError(errno.EBUSY, "a RAM file managed by the agent")
        ancestor: Inode | None = newparent
        while ancestor is not None:
            if ancestor is node:
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            ancestor = ancestor.parent
        if target is not None:
            if noreplace:
                raise FsError(errno.EEXIST)
            if target.is_dir != node.is_dir:
                raise FsError(errno.EISDIR if target.is_dir else errno.ENOTDIR)
            if target.is_dir and target.children:
                raise FsError(errno.ENOTEMPTY)
            self.detach(newparent, newname)
        del parent.children[name]
        newparent.children[newname] = node
        if node.is_dir:
            parent.nlink -= 1
            newparent.nlink += 1
        node.parent, node.name = newparent, newname
        node.ctime = time.time()

    def forget(self, nodeid: int, count: int) -> None:
        node = self.nodes.get(nodeid)
        if node is None or nodeid == ROOT_ID:
            return
        node.nlookup = max(0, node.nlookup - count)
        self.maybe_drop(node)

    def maybe_drop(self, node: Inode) -> None:
        """Free an inode nobody can reach: unlinked and forgotten by the kernel."""
        if node.parent is None and node.nlookup == 0 and node.nodeid != ROOT_ID:
            if node.ram is not None and node.ram.in_use:
                return  # the daemon itself still maps it; dropped on release
            self.nodes.pop(node.nodeid, None)
            if node.ram is not None:
                node.ram.destroy()
