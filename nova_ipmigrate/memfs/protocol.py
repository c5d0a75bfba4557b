"""The FUSE wire format, declared once.

Struct layouts, opcodes and flags of the Linux FUSE protocol (``linux/fuse.h``,
protocol 7.38) that memfs speaks, plus helpers to parse requests and pack
replies and notifications. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

KERNEL_VERSION = 7
#: The minor version memfs implements; the kernel negotiates down to it.
KERNEL_MINOR_VERSION = 38
#: The minor version whose INIT reply layout we send (64-byte fuse_init_out).
MIN_SUPPORTED_MINOR = 23

ROOT_ID = 1
PAGE_SIZE = 4096


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


#: Requests the kernel sends without waiting for a reply.
NO_REPLY = frozenset({Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT,
                      Opcode.NOTIFY_REPLY})


class NotifyCode(enum.IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


# INIT flags
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
EXPLICIT_INVAL_DATA = 1 << 25
INIT_EXT = 1 << 30

# OPEN reply flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NOFLUSH = 1 << 5
#: every open of a memfs file: keep the page cache (an open without it drops
#: the whole file's cache: lost pages), and no FLUSH on close (a daemon dying
#: with its own fd open would otherwise wait forever for its own answer)
OPEN_FLAGS = FOPEN_KEEP_CACHE | FOPEN_NOFLUSH

# SETATTR valid bits
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_CTIME = 1 << 10

# WRITE flags: set on writes of the page cache (writeback and launder).
WRITE_CACHE = 1 << 0

# RENAME2 flags
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

# Struct layouts (little endian on every supported host; native '=' keeps
# them free of padding, which linux/fuse.h declares explicitly).
IN_HEADER = struct.Struct("=IIQQIIIHH")        # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("=IiQ")             # len error unique
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")      # fuse_attr (88 bytes)
ENTRY_OUT = struct.Struct("=QQQQII")           # + ATTR
ATTR_OUT = struct.Struct("=QII")               # + ATTR
INIT_IN = struct.Struct("=IIII")               # major minor max_readahead flags (7.36+: flags2...)
INIT_OUT = struct.Struct("=IIIIHHIIHHI28x")    # 64 bytes
OPEN_IN = struct.Struct("=II")
OPEN_OUT = struct.Struct("=QII")
CREATE_IN = struct.Struct("=IIII")
MKDIR_IN = struct.Struct("=II")
MKNOD_IN = struct.Struct("=IIII")
RENAME_IN = struct.Struct("=Q")
RENAME2_IN = struct.Struct("=QII")
READ_IN = struct.Struct("=QQIIQII")
WRITE_IN = struct.Struct("=QQIIQII")
WRITE_OUT = struct.Struct("=II")
RELEASE_IN = struct.Struct("=QIIQ")
SETATTR_IN = struct.Struct("=IIQQQQQQIIIIIIII")
GETATTR_IN = struct.Struct("=IIQ")
FORGET_IN = struct.Struct("=Q")
BATCH_FORGET_IN = struct.Struct("=II")
FORGET_ONE = struct.Struct("=QQ")
FALLOCATE_IN = struct.Struct("=QQQII")
KSTATFS = struct.Struct("=QQQQQIIII24x")       # fuse_kstatfs (80 bytes)
DIRENT = struct.Struct("=QQII")                # ino off namelen type, then name
NOTIFY_INVAL_INODE = struct.Struct("=Qqq")
#: fuse_notify_inval_entry_out: parent, namelen, flags; the name and a NUL follow
NOTIFY_INVAL_ENTRY = struct.Struct("=QII")
NOTIFY_STORE = struct.Struct("=QQII")

assert ATTR.size == 88 and INIT_OUT.size == 64 and SETATTR_IN.size == 88
assert IN_HEADER.size == 40 and KSTATFS.size == 80 and READ_IN.size == 40


class ProtocolError(Exception):
    """A request that does not follow the FUSE protocol."""


@dataclass(frozen=True)
class Request:
    """One request read from /dev/fuse: its header and its body."""

    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    body: memoryview

    @classmethod
    def parse(cls, buf: memoryview) -> Request:
        if len(buf) < IN_HEADER.size:
            raise ProtocolError(f"request of {len(buf)} bytes is shorter than its header")
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = IN_HEADER.unpack_from(buf)
        if length != len(buf):
            raise ProtocolError(f"header says {length} bytes, read {len(buf)}")
        end = length - extlen * 8
        if end < IN_HEADER.size:
            raise ProtocolError(f"extension length {extlen * 8} exceeds the request")
        return cls(opcode, unique, nodeid, uid, gid, pid, buf[IN_HEADER.size:end])

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        """The body's fixed part; ProtocolError when the body is too short."""
        if len(self.body) < layout.size:
            raise ProtocolError(
                f"{_opname(self.opcode)} body of {len(self.body)} bytes, need {layout.size}")
        return layout.unpack_from(self.body)

    def names(self, offset: int, count: int) -> list[str]:
        """``count`` NUL-terminated names starting at ``offset`` in the body."""
        out: list[str] = []
        raw = bytes(self.body[offset:])
        for _ in range(count):
            end = raw.find(b"\0")
            if end < 0:
                raise ProtocolError(f"{_opname(self.opcode)}: name is not NUL-terminated")
            name = raw[:end]
            if not name or b"/" in name or len(name) > 255:
                raise ProtocolError(f"{_opname(self.opcode)}: invalid name {name!r}")
            out.append(name.decode("utf-8", "surrogateescape"))
            raw = raw[end + 1:]
        return out


def _opname(opcode: int) -> str:
    try:
        return Opcode(opcode).name
    except ValueError:
        return f"opcode {opcode}"


def out_header(unique: int, payload_len: int, error: int = 0) -> bytes:
    return OUT_HEADER.pack(OUT_HEADER.size + payload_len, error, unique)


def error_reply(unique: int, errno_: int) -> bytes:
    """A reply carrying ``-errno_``."""
    return OUT_HEADER.pack(OUT_HEADER.size, -errno_, unique)


def notification(code: NotifyCode, payload: bytes) -> bytes:
    """A notification: unique 0, the code in the error field."""
    return OUT_HEADER.pack(OUT_HEADER.size + len(payload), int(code), 0) + payload


def inval_inode(nodeid: int, offset: int, length: int) -> bytes:
    return notification(NotifyCode.INVAL_INODE,
                        NOTIFY_INVAL_INODE.pack(nodeid, offset, length))


def inval_entry(parent: int, name: str) -> bytes:
    """Tell the kernel to forget the dentry ``name`` in ``parent`` (the daemon removed it)."""
    raw = name.encode()
    return notification(NotifyCode.INVAL_ENTRY,
                        NOTIFY_INVAL_ENTRY.pack(parent, len(raw), 0) + raw + b"\0")


def pack_dirent(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    rec = DIRENT.pack(ino, off, len(name), dtype) + name
    return rec + b"\0" * (-len(rec) % 8)
