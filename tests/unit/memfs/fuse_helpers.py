"""Build FUSE requests and decode replies for unit tests of the memfs session.

No mount and no /dev/fuse: requests are the bytes the kernel would write,
replies are what :meth:`FuseSession.handle` returns, joined.
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nova_ipmigrate.memfs import protocol as P
from nova_ipmigrate.memfs.session import FuseSession, ReaderContext

_unique = itertools.count(1)

#: fuse_init_in as a 7.36+ kernel sends it: 5 words then unused[11].
INIT_IN_FULL_SIZE = 64


def next_unique() -> int:
    return next(_unique)


def build(opcode: int, body: bytes = b"", nodeid: int = P.ROOT_ID, unique: int | None = None,
          uid: int = 0, gid: int = 0, pid: int = 1000, extlen: int = 0,
          length: int | None = None) -> bytes:
    """One raw request: fuse_in_header followed by ``body``."""
    if unique is None:
        unique = next_unique()
    total = P.IN_HEADER.size + len(body)
    return P.IN_HEADER.pack(total if length is None else length, opcode, unique, nodeid,
                            uid, gid, pid, extlen, 0) + body


def name(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def init_body(major: int = P.KERNEL_VERSION, minor: int = P.KERNEL_MINOR_VERSION,
              max_readahead: int = 128 * 1024, flags: int = 0, flags2: int = 0,
              size: int = INIT_IN_FULL_SIZE) -> bytes:
    body = P.INIT_IN.pack(major, minor, max_readahead, flags) + struct.pack("=I", flags2)
    return (body + bytes(max(0, size - len(body))))[:size]


@dataclass
class Attr:
    ino: int
    size: int
    blocks: int
    mode: int
    nlink: int
    uid: int
    gid: int
    blksize: int


def decode_attr(buf: bytes, offset: int = 0) -> Attr:
    f = P.ATTR.unpack_from(buf, offset)
    return Attr(ino=f[0], size=f[1], blocks=f[2], mode=f[9], nlink=f[10], uid=f[11],
                gid=f[12], blksize=f[14])


@dataclass
class Reply:
    length: int
    error: int
    unique: int
    payload: bytes

    @property
    def ok(self) -> bool:
        return self.error == 0

    def entry(self) -> tuple[int, Attr]:
        nodeid = P.ENTRY_OUT.unpack_from(self.payload)[0]
        return nodeid, decode_attr(self.payload, P.ENTRY_OUT.size)

    def attr(self) -> Attr:
        return decode_attr(self.payload, P.ATTR_OUT.size)

    def open_out(self, offset: int = 0) -> tuple[int, int]:
        fh, open_flags, _ = P.OPEN_OUT.unpack_from(self.payload, offset)
        return fh, open_flags

    def dirents(self) -> list[tuple[int, int, str, int]]:
        """[(ino, off, name, type)] of a READDIR reply."""
        out = []
        pos = 0
        while pos < len(self.payload):
            ino, off, namelen, dtype = P.DIRENT.unpack_from(self.payload, pos)
            start = pos + P.DIRENT.size
            out.append((ino, off, self.payload[start:start + namelen].decode(), dtype))
            reclen = P.DIRENT.size + namelen
            pos += reclen + (-reclen % 8)
        return out


Parts = Sequence[bytes | memoryview] | None


def join(parts: Parts) -> bytes:
    assert parts is not None
    return b"".join(bytes(p) for p in parts)


def decode(parts: Parts) -> Reply:
    """Join reply parts and check the header's length field."""
    raw = join(parts)
    assert len(raw) >= P.OUT_HEADER.size, raw
    length, error, unique = P.OUT_HEADER.unpack_from(raw)
    assert length == len(raw), (length, len(raw))
    return Reply(length, error, unique, raw[P.OUT_HEADER.size:])


class Client:
    """Sends requests to a FuseSession the way the kernel would."""

    def __init__(self, session: FuseSession, pid: int = 1000) -> None:
        self.session = session
        self.ctx = ReaderContext()
        self.pid = pid

    def raw(self, buf: bytes) -> Parts:
        return self.session.handle(memoryview(bytearray(buf)), self.ctx)

    def call(self, opcode: int, body: bytes = b"", nodeid: int = P.ROOT_ID,
             pid: int | None = None, **kw: int) -> Reply:
        unique = next_unique()
        parts = self.raw(build(opcode, body, nodeid, unique=unique,
                               pid=self.pid if pid is None else pid, **kw))
        r = decode(parts)
        assert r.unique == unique
        assert r.error <= 0
        if r.error:
            assert r.payload == b""
        return r

    # -- operations ----------------------------------------------------------

    def init(self, **kw: int) -> Reply:
        return self.call(P.Opcode.INIT, init_body(**kw))

    def lookup(self, parent: int, n: str) -> Reply:
        return self.call(P.Opcode.LOOKUP, name(n), parent)

    def mkdir(self, parent: int, n: str, mode: int = 0o755, umask: int = 0o022) -> Reply:
        return self.call(P.Opcode.MKDIR, P.MKDIR_IN.pack(mode, umask) + name(n), parent)

    def mknod(self, parent: int, n: str, mode: int = stat.S_IFREG | 0o600) -> Reply:
        return self.call(P.Opcode.MKNOD, P.MKNOD_IN.pack(mode, 0, 0o022, 0) + name(n), parent)

    def create(self, parent: int, n: str, mode: int = stat.S_IFREG | 0o600,
               flags: int = os.O_RDWR | os.O_CREAT, pid: int | None = None) -> Reply:
        return self.call(P.Opcode.CREATE, P.CREATE_IN.pack(flags, mode, 0o022, 0) + name(n),
                         parent, pid=pid)

    def setattr(self, nodeid: int, valid: int, size: int = 0, mode: int = 0,
                uid: int = 0, gid: int = 0) -> Reply:
        body = P.SETATTR_IN.pack(valid, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, mode, 0, uid, gid, 0)
        return self.call(P.Opcode.SETATTR, body, nodeid)

    def truncate(self, nodeid: int, size: int) -> Reply:
        return self.setattr(nodeid, P.FATTR_SIZE, size=size)

    def getattr(self, nodeid: int) -> Reply:
        return self.call(P.Opcode.GETATTR, P.GETATTR_IN.pack(0, 0, 0), nodeid)

    def open(self, nodeid: int, flags: int = os.O_RDWR, pid: int | None = None) -> Reply:
        return self.call(P.Opcode.OPEN, P.OPEN_IN.pack(flags, 0), nodeid, pid=pid)

    def release(self, nodeid: int, fh: int) -> Reply:
        return self.call(P.Opcode.RELEASE, P.RELEASE_IN.pack(fh, 0, 0, 0), nodeid)

    def read(self, nodeid: int, offset: int, size: int, fh: int = 0) -> Reply:
        return self.call(P.Opcode.READ, P.READ_IN.pack(fh, offset, size, 0, 0, 0, 0), nodeid)

    def write(self, nodeid: int, offset: int, data: bytes, fh: int = 0,
              size: int | None = None) -> Reply:
        n = len(data) if size is None else size
        return self.call(P.Opcode.WRITE, P.WRITE_IN.pack(fh, offset, n, 0, 0, 0, 0) + data,
                         nodeid)

    def opendir(self, nodeid: int) -> Reply:
        return self.call(P.Opcode.OPENDIR, P.OPEN_IN.pack(0, 0), nodeid)

    def readdir(self, nodeid: int, offset: int = 0, size: int = 4096) -> Reply:
        return self.call(P.Opcode.READDIR, P.READ_IN.pack(0, offset, size, 0, 0, 0, 0), nodeid)

    def unlink(self, parent: int, n: str) -> Reply:
        return self.call(P.Opcode.UNLINK, name(n), parent)

    def rmdir(self, parent: int, n: str) -> Reply:
        return self.call(P.Opcode.RMDIR, name(n), parent)

    def rename(self, parent: int, n: str, newparent: int, newname: str) -> Reply:
        return self.call(P.Opcode.RENAME, P.RENAME_IN.pack(newparent) + name(n) + name(newname),
                         parent)

    def rename2(self, parent: int, n: str, newparent: int, newname: str,
                flags: int) -> Reply:
        return self.call(P.Opcode.RENAME2,
                         P.RENAME2_IN.pack(newparent, flags, 0) + name(n) + name(newname),
                         parent)

    def fallocate(self, nodeid: int, offset: int, length: int, mode: int = 0) -> Reply:
        return self.call(P.Opcode.FALLOCATE, P.FALLOCATE_IN.pack(0, offset, length, mode, 0),
                         nodeid)

    def statfs(self) -> Reply:
        return self.call(P.Opcode.STATFS)

    def forget(self, nodeid: int, nlookup: int) -> Parts:
        return self.raw(build(P.Opcode.FORGET, P.FORGET_IN.pack(nlookup), nodeid))

    def batch_forget(self, items: list[tuple[int, int]]) -> Parts:
        body = P.BATCH_FORGET_IN.pack(len(items), 0) + b"".join(
            P.FORGET_ONE.pack(n, c) for n, c in items)
        return self.raw(build(P.Opcode.BATCH_FORGET, body, 0))
