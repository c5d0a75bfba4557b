"""Tests of the FUSE wire format helpers in nova_ipmigrate.memfs.protocol."""

from __future__ import annotations

import struct

import pytest

from nova_ipmigrate.memfs import protocol as P
from tests.unit.memfs.fuse_helpers import build


def parse(buf: bytes) -> P.Request:
    return P.Request.parse(memoryview(buf))


# -- struct layouts -------------------------------------------------------------


@pytest.mark.parametrize(("layout", "size"), [
    (P.IN_HEADER, 40), (P.OUT_HEADER, 16), (P.ATTR, 88), (P.ENTRY_OUT, 40),
    (P.ATTR_OUT, 16), (P.INIT_IN, 16), (P.INIT_OUT, 64), (P.OPEN_IN, 8), (P.OPEN_OUT, 16),
    (P.CREATE_IN, 16), (P.MKDIR_IN, 8), (P.MKNOD_IN, 16), (P.RENAME_IN, 8),
    (P.RENAME2_IN, 16), (P.READ_IN, 40), (P.WRITE_IN, 40), (P.WRITE_OUT, 8),
    (P.RELEASE_IN, 24), (P.SETATTR_IN, 88), (P.GETATTR_IN, 16), (P.FORGET_IN, 8),
    (P.BATCH_FORGET_IN, 8), (P.FORGET_ONE, 16), (P.FALLOCATE_IN, 32), (P.KSTATFS, 80),
    (P.DIRENT, 24), (P.NOTIFY_INVAL_INODE, 24), (P.NOTIFY_STORE, 24),
])
def test_struct_sizes_match_linux_fuse_h(layout: struct.Struct, size: int) -> None:
    assert layout.size == size


def test_no_reply_opcodes() -> None:
    assert P.NO_REPLY == {P.Opcode.FORGET, P.Opcode.BATCH_FORGET, P.Opcode.INTERRUPT,
                          P.Opcode.NOTIFY_REPLY}


# -- Request.parse --------------------------------------------------------------


def test_parse_valid_request() -> None:
    body = P.OPEN_IN.pack(2, 0)
    req = parse(build(P.Opcode.OPEN, body, nodeid=7, unique=99, uid=11, gid=12, pid=13))
    assert (req.opcode, req.unique, req.nodeid, req.uid, req.gid, req.pid) == (
        P.Opcode.OPEN, 99, 7, 11, 12, 13)
    assert bytes(req.body) == body
    assert isinstance(req.body, memoryview)


def test_parse_header_only() -> None:
    req = parse(build(P.Opcode.STATFS, b""))
    assert len(req.body) == 0


@pytest.mark.parametrize("n", [0, 1, 39])
def test_parse_short_buffer(n: int) -> None:
    buf = build(P.Opcode.STATFS)[:n]
    with pytest.raises(P.ProtocolError, match="shorter than its header"):
        parse(buf)


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_parse_length_mismatch(delta: int) -> None:
    body = b"x" * 16
    buf = build(P.Opcode.LOOKUP, body, length=P.IN_HEADER.size + len(body) + delta)
    with pytest.raises(P.ProtocolError, match="header says"):
        parse(buf)


def test_parse_extension_strips_the_extension() -> None:
    body = b"abcdefgh" + b"E" * 16
    req = parse(build(P.Opcode.LOOKUP, body, extlen=2))
    assert bytes(req.body) == b"abcdefgh"


def test_parse_extension_covering_the_whole_body() -> None:
    req = parse(build(P.Opcode.LOOKUP, b"E" * 8, extlen=1))
    assert bytes(req.body) == b""


@pytest.mark.parametrize(("body_len", "extlen"), [(0, 1), (8, 2), (16, 0xFFFF)])
def test_parse_extension_beyond_the_request(body_len: int, extlen: int) -> None:
    with pytest.raises(P.ProtocolError, match="extension length"):
        parse(build(P.Opcode.LOOKUP, b"\0" * body_len, extlen=extlen))


# -- unpack ---------------------------------------------------------------------


def test_unpack_exact_and_longer_body() -> None:
    req = parse(build(P.Opcode.OPEN, P.OPEN_IN.pack(5, 6) + b"trailing"))
    assert req.unpack(P.OPEN_IN) == (5, 6)


@pytest.mark.parametrize("n", [0, 1, 39])
def test_unpack_short_body(n: int) -> None:
    req = parse(build(P.Opcode.READ, b"\0" * n))
    with pytest.raises(P.ProtocolError, match=f"READ body of {n} bytes, need 40"):
        req.unpack(P.READ_IN)


def test_unpack_short_body_unknown_opcode_is_named() -> None:
    req = parse(build(9999, b""))
    with pytest.raises(P.ProtocolError, match="opcode 9999"):
        req.unpack(P.OPEN_IN)


# -- names ----------------------------------------------------------------------


def test_names_single_and_pair() -> None:
    req = parse(build(P.Opcode.RENAME, P.RENAME_IN.pack(1) + b"old\0new\0"))
    assert req.names(P.RENAME_IN.size, 2) == ["old", "new"]
    assert req.names(P.RENAME_IN.size, 1) == ["old"]


def test_names_ignores_trailing_padding() -> None:
    req = parse(build(P.Opcode.LOOKUP, b"pc.ram\0\0\0\0"))
    assert req.names(0, 1) == ["pc.ram"]


def test_names_non_utf8_round_trips() -> None:
    req = parse(build(P.Opcode.LOOKUP, b"\xff\xfe\0"))
    (n,) = req.names(0, 1)
    assert n.encode("utf-8", "surrogateescape") == b"\xff\xfe"


@pytest.mark.parametrize("body", [b"", b"noterm", b"one\0two"])
def test_names_missing_nul(body: bytes) -> None:
    req = parse(build(P.Opcode.RENAME, body))
    with pytest.raises(P.ProtocolError, match="not NUL-terminated"):
        req.names(0, 2 if b"\0" in body else 1)


@pytest.mark.parametrize("raw", [b"", b"a/b", b"/", b"x" * 256])
def test_names_invalid(raw: bytes) -> None:
    req = parse(build(P.Opcode.LOOKUP, raw + b"\0"))
    with pytest.raises(P.ProtocolError, match="invalid name"):
        req.names(0, 1)


def test_names_255_bytes_is_fine() -> None:
    req = parse(build(P.Opcode.LOOKUP, b"x" * 255 + b"\0"))
    assert req.names(0, 1) == ["x" * 255]


def test_names_offset_past_the_body() -> None:
    req = parse(build(P.Opcode.MKDIR, b"\0" * 4))
    with pytest.raises(P.ProtocolError):
        req.names(P.MKDIR_IN.size, 1)


# -- replies and notifications ---------------------------------------------------


def test_error_reply() -> None:
    raw = P.error_reply(42, 2)
    assert len(raw) == 16
    assert P.OUT_HEADER.unpack(raw) == (16, -2, 42)


def test_out_header() -> None:
    assert P.OUT_HEADER.unpack(P.out_header(7, 100)) == (116, 0, 7)
    assert P.OUT_HEADER.unpack(P.out_header(7, 0, -5)) == (16, -5, 7)


def test_notification_and_inval_inode() -> None:
    raw = P.inval_inode(5, 4096, -1)
    assert len(raw) == 16 + 24
    assert P.OUT_HEADER.unpack_from(raw) == (40, P.NotifyCode.INVAL_INODE, 0)
    assert P.NOTIFY_INVAL_INODE.unpack_from(raw, 16) == (5, 4096, -1)


@pytest.mark.parametrize("namelen", list(range(0, 20)) + [255])
def test_pack_dirent_alignment(namelen: int) -> None:
    n = b"n" * namelen
    rec = P.pack_dirent(9, 3, n, 8)
    assert len(rec) % 8 == 0
    assert len(rec) - (24 + namelen) < 8
    assert P.DIRENT.unpack_from(rec) == (9, 3, namelen, 8)
    assert rec[24:24 + namelen] == n
    assert rec[24 + namelen:] == b"\0" * (len(rec) - 24 - namelen)


def test_pack_dirent_exact_size() -> None:
    assert len(P.pack_dirent(1, 1, b".", 4)) == 32
    assert len(P.pack_dirent(1, 1, b"12345678", 4)) == 32
    assert len(P.pack_dirent(1, 1, b"123456789", 4)) == 40
