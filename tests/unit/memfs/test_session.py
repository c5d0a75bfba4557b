"""Tests of FuseSession: the FUSE opcode handlers, driven with raw request bytes."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nova_ipmigrate.memfs import protocol as P
from nova_ipmigrate.memfs.pages import PageState, PageTable
from nova_ipmigrate.memfs.ramfile import RamFile
from nova_ipmigrate.memfs.session import MAX_WRITE, FuseSession, ReaderContext, SessionConfig
from nova_ipmigrate.memfs.store import PageStore
from tests.unit.memfs.fuse_helpers import Client, Parts, build, decode, init_body, name

MIB = 2**20
PG = P.PAGE_SIZE
STORE_PAGES = 64


@pytest.fixture
def store() -> Iterator[PageStore]:
    s = PageStore(STORE_PAGES)
    yield s
    s.close()


@pytest.fixture
def session(store: PageStore) -> FuseSession:
    return FuseSession(store, SessionConfig(max_readahead=64 * 1024))


@pytest.fixture
def client(session: FuseSession) -> Client:
    c = Client(session)
    assert c.init().ok
    return c


def fresh_client(**config: int) -> tuple[Client, FuseSession]:
    s = FuseSession(PageStore(8), SessionConfig(**config))  # type: ignore[arg-type]
    return Client(s), s


def ram_of(session: FuseSession, nodeid: int) -> RamFile:
    ram = session.tree.get(nodeid).ram
    assert ram is not None
    return ram


def table_of(session: FuseSession, nodeid: int) -> PageTable:
    table = ram_of(session, nodeid).table
    assert table is not None
    return table


def mkdirs(c: Client, *names: str) -> int:
    parent = P.ROOT_ID
    for n in names:
        r = c.mkdir(parent, n)
        assert r.ok, r
        parent = r.entry()[0]
    return parent


@pytest.fixture
def vmdir(client: Client) -> int:
    """libvirt's layout: /libvirt/qemu/1-vm."""
    return mkdirs(client, "libvirt", "qemu", "1-vm")


def ram_file(c: Client, parent: int, size: int = 16 * MIB, n: str = "pc.ram") -> tuple[int, int]:
    r = c.create(parent, n)
    assert r.ok, r
    nodeid, _ = r.entry()
    fh, _ = r.open_out(P.ENTRY_OUT.size + P.ATTR.size)
    if size:
        assert c.truncate(nodeid, size).ok
    return nodeid, fh


# -- INIT -------------------------------------------------------------------------


def _init_out(c: Client, **kw: int) -> tuple[int, ...]:
    r = c.init(**kw)
    assert r.ok, r
    assert len(r.payload) == P.INIT_OUT.size
    return P.INIT_OUT.unpack(r.payload)


def test_init_caps_minor_at_38() -> None:
    c, s = fresh_client()
    out = _init_out(c, minor=41)
    assert out[:2] == (7, 38)
    assert s.proto_minor == 38 and s.initialized


def test_init_keeps_older_minor() -> None:
    c, s = fresh_client()
    out = _init_out(c, minor=36)
    assert out[:2] == (7, 36)
    assert s.proto_minor == 36


@pytest.mark.parametrize(("config", "kernel", "expected"), [
    (64 * 1024, 128 * 1024, 64 * 1024),
    (64 * 1024, 4096, 4096),
    (0, 128 * 1024, 0),
])
def test_init_max_readahead(config: int, kernel: int, expected: int) -> None:
    c, _ = fresh_client(max_readahead=config)
    assert _init_out(c, max_readahead=kernel)[2] == expected


def test_init_flags_masked_to_kernel_offer() -> None:
    want = P.ASYNC_READ | P.BIG_WRITES | P.PARALLEL_DIROPS
    c, _ = fresh_client()
    everything = 0xFFFFFFFF
    assert _init_out(c, flags=everything)[3] == want
    c, _ = fresh_client()
    assert _init_out(c, flags=P.ASYNC_READ | P.WRITEBACK_CACHE | P.AUTO_INVAL_DATA)[3] \
        == P.ASYNC_READ
    c, _ = fresh_client()
    assert _init_out(c, flags=0)[3] == 0


def test_init_reply_fields() -> None:
    c, _ = fresh_client()
    (_maj, _min, _ra, _flags, max_background, congestion, max_write, time_gran, max_pages,
     _align, flags2) = _init_out(c)
    assert max_write == MAX_WRITE
    assert time_gran == 1
    assert max_background >= 1 and congestion >= 1
    assert flags2 == 0 and max_pages == 0


@pytest.mark.parametrize(("major", "minor"), [(6, 38), (8, 0), (7, 22), (7, 0)])
def test_init_rejects_unsupported_protocol(major: int, minor: int) -> None:
    c, s = fresh_client()
    r = c.init(major=major, minor=minor)
    assert r.error == -errno.EPROTO
    assert not s.initialized
    # still not initialized: everything else is refused
    assert c.statfs().error == -errno.EIO


def test_init_accepts_pre_7_36_kernel_init_in() -> None:
    c, s = fresh_client()
    r = c.call(P.Opcode.INIT, init_body(minor=31, size=16))
    assert r.ok
    assert s.proto_minor == 31


def test_init_short_body_is_einval() -> None:
    c, s = fresh_client()
    r = c.call(P.Opcode.INIT, b"\0" * 8)
    assert r.error == -errno.EINVAL
    assert s.errors == 1 and not s.initialized


@pytest.mark.parametrize("opcode", [P.Opcode.LOOKUP, P.Opcode.STATFS, P.Opcode.GETATTR, 9999])
def test_requests_before_init_get_eio(opcode: int) -> None:
    c, s = fresh_client()
    r = c.call(opcode, name("x"))
    assert r.error == -errno.EIO
    assert s.errors == 1


def test_destroy(client: Client, session: FuseSession) -> None:
    assert client.call(P.Opcode.DESTROY).ok
    assert session.destroyed


# -- libvirt's layout ---------------------------------------------------------------


def test_libvirt_layout(client: Client, session: FuseSession, vmdir: int) -> None:
    r = client.create(vmdir, "pc.ram")
    assert r.ok
    assert len(r.payload) == P.ENTRY_OUT.size + P.ATTR.size + P.OPEN_OUT.size
    nodeid, attr = r.entry()
    assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o600 & ~0o022
    assert attr.size == 0 and attr.ino == nodeid
    fh, open_flags = r.open_out(P.ENTRY_OUT.size + P.ATTR.size)
    assert open_flags & P.FOPEN_KEEP_CACHE
    assert fh > 0

    r = client.truncate(nodeid, 16 * MIB)
    assert r.ok and r.attr().size == 16 * MIB
    attr = client.getattr(nodeid).attr()
    assert attr.size == 16 * MIB and attr.blksize == PG and attr.nlink == 1

    node = session.tree.get(nodeid)
    assert node.path() == "libvirt/qemu/1-vm/pc.ram"
    assert node.ram is not None and node.ram.npages == 16 * MIB // PG
    assert [p for p, _ in session.ram_files()] == ["libvirt/qemu/1-vm/pc.ram"]


def test_lookup_and_directory_attrs(client: Client, vmdir: int) -> None:
    r = client.lookup(P.ROOT_ID, "libvirt")
    assert r.ok
    nodeid, attr = r.entry()
    assert stat.S_ISDIR(attr.mode) and stat.S_IMODE(attr.mode) == 0o755
    assert attr.nlink == 3  # ., its entry in /, qemu's ..
    r = client.lookup(nodeid, "qemu")
    assert r.ok
    assert client.lookup(r.entry()[0], "1-vm").entry()[0] == vmdir


def test_lookup_missing_is_enoent(client: Client) -> None:
    assert client.lookup(P.ROOT_ID, "nope").error == -errno.ENOENT


def test_lookup_in_a_file_is_enotdir(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.lookup(nodeid, "x").error == -errno.ENOTDIR


def test_unknown_node_is_estale(client: Client) -> None:
    assert client.getattr(12345).error == -errno.ESTALE


def test_mkdir_existing_is_eexist(client: Client, vmdir: int) -> None:
    assert client.mkdir(P.ROOT_ID, "libvirt").error == -errno.EEXIST


def test_mkdir_applies_umask(client: Client) -> None:
    r = client.mkdir(P.ROOT_ID, "d", mode=0o777, umask=0o027)
    assert stat.S_IMODE(r.entry()[1].mode) == 0o750


def test_mknod_regular_file(client: Client, session: FuseSession) -> None:
    r = client.mknod(P.ROOT_ID, "f")
    assert r.ok
    nodeid, attr = r.entry()
    assert stat.S_ISREG(attr.mode)
    assert session.tree.get(nodeid).ram is not None


@pytest.mark.parametrize("fmt", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK,
                                 stat.S_IFLNK])
def test_mknod_non_regular_is_eperm(client: Client, fmt: int) -> None:
    assert client.mknod(P.ROOT_ID, "n", mode=fmt | 0o600).error == -errno.EPERM
    assert client.lookup(P.ROOT_ID, "n").error == -errno.ENOENT


def test_create_non_regular_is_eperm(client: Client) -> None:
    assert client.create(P.ROOT_ID, "n", mode=stat.S_IFIFO | 0o600).error == -errno.EPERM


# -- READ and WRITE -----------------------------------------------------------------


def test_read_untouched_page_is_zero(client: Client, session: FuseSession, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    r = client.read(nodeid, 5 * PG, PG)
    assert r.ok and r.payload == bytes(PG)
    table = table_of(session, nodeid)
    assert table.state[5] == PageState.CACHED_ZERO
    assert session.read_latency.total == 1


def test_write_then_read(client: Client, session: FuseSession, store: PageStore,
                         vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    data = bytes(range(256)) * (PG // 256)
    r = client.write(nodeid, 3 * PG, data)
    assert r.ok and P.WRITE_OUT.unpack(r.payload) == (PG, 0)
    table = table_of(session, nodeid)
    assert table.state[3] == PageState.CACHED  # expected: a WRITE makes the page resident
    assert store.used == 1
    assert client.read(nodeid, 3 * PG, PG).payload == data


def test_write_spanning_pages(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    data = os.urandom(3 * PG)
    assert client.write(nodeid, PG, data).ok
    assert client.read(nodeid, PG, 3 * PG).payload == data
    # an unaligned read across the boundary
    assert client.read(nodeid, PG + 100, PG).payload == data[100:100 + PG]


def test_partial_write_merges_with_zeros(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.write(nodeid, 2 * PG + 10, b"hello").ok
    page = client.read(nodeid, 2 * PG, PG).payload
    assert page == bytes(10) + b"hello" + bytes(PG - 15)


def test_partial_write_after_read_keeps_zero_background(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.read(nodeid, 0, PG).payload == bytes(PG)
    assert client.write(nodeid, 4090, b"abcdef").ok   # straddles pages 0 and 1
    page0 = client.read(nodeid, 0, PG).payload
    page1 = client.read(nodeid, PG, PG).payload
    assert page0 == bytes(4090) + b"abcdef"
    assert page1 == bytes(PG)
    assert client.write(nodeid, PG + 1, b"Z").ok
    assert client.read(nodeid, PG, 3).payload == b"\0Z\0"


def test_partial_write_over_existing_data(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.write(nodeid, 0, b"A" * PG).ok
    assert client.write(nodeid, 10, b"bb").ok
    assert client.read(nodeid, 0, PG).payload == b"A" * 10 + b"bb" + b"A" * (PG - 12)


@pytest.mark.parametrize(("offset", "length"), [(16 * MIB, 1), (16 * MIB - 1, 2),
                                                (16 * MIB - PG, PG + 1), (2**40, PG)])
def test_write_beyond_eof_is_efbig(client: Client, store: PageStore, vmdir: int,
                                   offset: int, length: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.write(nodeid, offset, b"x" * length).error == -errno.EFBIG
    assert store.used == 0


def test_write_to_empty_file_is_efbig(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir, size=0)
    assert client.write(nodeid, 0, b"x").error == -errno.EFBIG


def test_write_last_byte_is_fine(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.write(nodeid, 16 * MIB - 1, b"z").ok
    assert client.read(nodeid, 16 * MIB - 1, 10).payload == b"z"


@pytest.mark.parametrize("offset", [16 * MIB, 16 * MIB + 1, 2**63])
def test_read_past_eof_returns_nothing(client: Client, vmdir: int, offset: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    r = client.read(nodeid, offset, PG)
    assert r.ok and r.payload == b""


def test_read_is_clipped_at_eof(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    r = client.read(nodeid, 16 * MIB - 100, PG)
    assert r.ok and len(r.payload) == 100


def test_read_of_empty_file_and_zero_size(client: Client, vmdir: int) -> None:
    empty, _ = ram_file(client, vmdir, size=0, n="empty")
    assert client.read(empty, 0, PG).payload == b""
    nodeid, _ = ram_file(client, vmdir)
    assert client.read(nodeid, 0, 0).payload == b""


def test_read_is_capped_at_max_write(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert len(client.read(nodeid, 100, 4 * MAX_WRITE).payload) == MAX_WRITE


def test_read_and_write_of_a_directory_is_eisdir(client: Client, vmdir: int) -> None:
    assert client.read(vmdir, 0, PG).error == -errno.EISDIR
    assert client.write(vmdir, 0, b"x").error == -errno.EISDIR


def test_write_enospc_when_store_full(vmdir: int, client: Client, store: PageStore) -> None:
    nodeid, _ = ram_file(client, vmdir)
    for i in range(STORE_PAGES):
        assert client.write(nodeid, i * PG, b"x").ok
    assert client.write(nodeid, STORE_PAGES * PG, b"x").error == -errno.ENOSPC


# -- SETATTR, OPEN, FALLOCATE ----------------------------------------------------------


def test_setattr_mode_uid_gid(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    r = client.setattr(nodeid, P.FATTR_MODE | P.FATTR_UID | P.FATTR_GID,
                       mode=stat.S_IFDIR | 0o640, uid=107, gid=108)
    attr = r.attr()
    assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o640  # type is kept
    assert (attr.uid, attr.gid) == (107, 108)


def test_setattr_size_of_directory_is_eisdir(client: Client, vmdir: int) -> None:
    assert client.truncate(vmdir, PG).error == -errno.EISDIR


def test_setattr_unaligned_size_is_einval(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir, size=0)
    assert client.truncate(nodeid, PG + 1).error == -errno.EINVAL


def test_resize_untouched_file(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.truncate(nodeid, 32 * MIB).attr().size == 32 * MIB
    assert client.truncate(nodeid, 0).attr().size == 0


@pytest.mark.parametrize("touch", ["read", "write"])
def test_resize_with_pages_in_use_is_eperm(client: Client, vmdir: int, touch: str) -> None:
    nodeid, _ = ram_file(client, vmdir)
    if touch == "read":
        assert client.read(nodeid, 0, PG).ok
    else:
        assert client.write(nodeid, 0, b"x").ok
    assert client.truncate(nodeid, 32 * MIB).error == -errno.EPERM
    assert client.truncate(nodeid, 0).error == -errno.EPERM
    assert client.getattr(nodeid).attr().size == 16 * MIB
    # the same size is not a resize
    assert client.truncate(nodeid, 16 * MIB).ok


def test_open_with_o_trunc_of_sized_file_is_eperm(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.open(nodeid, os.O_RDWR | os.O_TRUNC).error == -errno.EPERM
    empty, _ = ram_file(client, vmdir, size=0, n="empty")
    assert client.open(empty, os.O_RDWR | os.O_TRUNC).ok


def test_open_keeps_cache(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    r = client.open(nodeid)
    assert r.ok
    fh, flags = r.open_out()
    assert flags & P.FOPEN_KEEP_CACHE and not flags & P.FOPEN_DIRECT_IO
    assert fh > 0


def test_open_of_directory_is_eisdir(client: Client, vmdir: int) -> None:
    assert client.open(vmdir).error == -errno.EISDIR


def test_fallocate(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir, size=0)
    assert client.fallocate(nodeid, 0, 8 * PG).ok
    assert client.getattr(nodeid).attr().size == 8 * PG
    assert client.fallocate(nodeid, PG, PG).ok  # inside: no change
    assert client.getattr(nodeid).attr().size == 8 * PG
    assert client.fallocate(nodeid, 0, PG, mode=1).error == -errno.EOPNOTSUPP
    assert client.fallocate(nodeid, 0, 16 * PG, mode=0x10).error == -errno.EOPNOTSUPP
    assert client.getattr(nodeid).attr().size == 8 * PG
    assert client.fallocate(vmdir, 0, PG).error == -errno.EISDIR


def test_fallocate_growing_a_file_in_use_is_eperm(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir, size=4 * PG)
    assert client.write(nodeid, 0, b"x").ok
    assert client.fallocate(nodeid, 0, 8 * PG).error == -errno.EPERM


@pytest.mark.parametrize("opcode", [P.Opcode.FLUSH, P.Opcode.FSYNC, P.Opcode.FSYNCDIR,
                                    P.Opcode.RELEASEDIR])
def test_trivial_ok_opcodes(client: Client, opcode: int) -> None:
    r = client.call(opcode, b"\0" * 24)
    assert r.ok and r.payload == b""


# -- own-tid logic -------------------------------------------------------------------


def test_user_opens_exclude_the_daemon(store: PageStore) -> None:
    s = FuseSession(store, SessionConfig(), own_tid=lambda pid: pid == 4242)
    c = Client(s)
    assert c.init().ok
    r = c.create(P.ROOT_ID, "pc.ram", pid=4242)
    nodeid, _ = r.entry()
    ram = ram_of(s, nodeid)
    fh_create, _ = r.open_out(P.ENTRY_OUT.size + P.ATTR.size)
    assert ram.user_opens == 0
    assert c.truncate(nodeid, 16 * PG).ok

    fh_own, _ = c.open(nodeid, pid=4242).open_out()
    assert ram.user_opens == 0
    fh_user, _ = c.open(nodeid, pid=1).open_out()
    assert ram.user_opens == 1
    fh_user2, _ = c.open(nodeid, pid=77).open_out()
    assert ram.user_opens == 2
    assert len({fh_create, fh_own, fh_user, fh_user2}) == 4

    assert c.release(nodeid, fh_own).ok
    assert ram.user_opens == 2
    assert c.release(nodeid, fh_user).ok
    assert ram.user_opens == 1
    assert c.release(nodeid, fh_user).ok      # twice: ignored
    assert c.release(nodeid, 999).ok          # unknown handle: ignored
    assert ram.user_opens == 1
    assert c.release(nodeid, fh_user2).ok
    assert c.release(nodeid, fh_create).ok
    assert ram.user_opens == 0


def test_create_by_user_counts(client: Client, session: FuseSession) -> None:
    nodeid, fh = ram_file(client, P.ROOT_ID)
    ram = ram_of(session, nodeid)
    assert ram.user_opens == 1 and ram.in_use
    assert client.release(nodeid, fh).ok
    assert ram.user_opens == 0 and not ram.in_use


# -- READDIR ---------------------------------------------------------------------


def test_readdir_lists_dot_dotdot_and_children(client: Client, vmdir: int) -> None:
    parent = client.lookup(client.lookup(P.ROOT_ID, "libvirt").entry()[0], "qemu").entry()[0]
    f, _ = ram_file(client, vmdir)
    sub = client.mkdir(vmdir, "sub").entry()[0]
    assert client.opendir(vmdir).ok
    ents = client.readdir(vmdir).dirents()
    assert ents == [
        (vmdir, 1, ".", stat.S_IFDIR >> 12),
        (parent, 2, "..", stat.S_IFDIR >> 12),
        (f, 3, "pc.ram", stat.S_IFREG >> 12),
        (sub, 4, "sub", stat.S_IFDIR >> 12),
    ]
    # past the end
    assert client.readdir(vmdir, offset=4).payload == b""
    assert client.readdir(vmdir, offset=100).payload == b""


def test_readdir_of_root_dotdot_is_root(client: Client) -> None:
    ents = client.readdir(P.ROOT_ID).dirents()
    assert ents[:2] == [(1, 1, ".", 4), (1, 2, "..", 4)]


def test_readdir_respects_size_and_continues(client: Client) -> None:
    d = client.mkdir(P.ROOT_ID, "d").entry()[0]
    names = [f"file-{i:03d}" for i in range(50)]
    for n in names:
        assert client.mknod(d, n).ok
    seen: list[str] = []
    offset = 0
    calls = 0
    while True:
        r = client.readdir(d, offset=offset, size=200)
        assert len(r.payload) <= 200
        ents = r.dirents()
        if not ents:
            break
        calls += 1
        assert [e[1] for e in ents] == list(range(offset + 1, offset + 1 + len(ents)))
        seen += [e[2] for e in ents]
        offset = ents[-1][1]
    assert seen == [".", ".."] + names
    assert calls > 5


def test_readdir_too_small_for_one_entry(client: Client) -> None:
    r = client.readdir(P.ROOT_ID, size=10)
    assert r.ok and r.payload == b""


def test_readdir_and_opendir_of_file_is_enotdir(client: Client, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.readdir(nodeid).error == -errno.ENOTDIR
    assert client.opendir(nodeid).error == -errno.ENOTDIR


# -- UNLINK, RMDIR, RENAME ----------------------------------------------------------


def test_unlink_and_rmdir(client: Client, store: PageStore, vmdir: int) -> None:
    nodeid, fh = ram_file(client, vmdir)
    assert client.write(nodeid, 0, b"x").ok
    qemu = client.lookup(client.lookup(P.ROOT_ID, "libvirt").entry()[0], "qemu").entry()[0]
    assert client.rmdir(qemu, "1-vm").error == -errno.ENOTEMPTY
    assert client.rmdir(vmdir, "pc.ram").error == -errno.ENOTDIR
    assert client.unlink(qemu, "1-vm").error == -errno.EISDIR
    assert client.unlink(vmdir, "pc.ram").ok
    assert client.lookup(vmdir, "pc.ram").error == -errno.ENOENT
    assert client.unlink(vmdir, "pc.ram").error == -errno.ENOENT
    assert client.rmdir(qemu, "1-vm").ok
    assert client.lookup(qemu, "1-vm").error == -errno.ENOENT
    assert client.rmdir(qemu, "1-vm").error == -errno.ENOENT


def test_unlinked_file_is_dropped_after_release_and_forget(client: Client,
                                                           session: FuseSession,
                                                           store: PageStore,
                                                           vmdir: int) -> None:
    nodeid, fh = ram_file(client, vmdir)  # nlookup 1, one user open
    assert client.write(nodeid, 0, b"x").ok
    assert client.unlink(vmdir, "pc.ram").ok
    assert client.release(nodeid, fh).ok
    assert nodeid in session.tree.nodes  # the kernel still knows it
    assert client.getattr(nodeid).ok
    assert client.forget(nodeid, 1) is None
    assert nodeid not in session.tree.nodes
    assert store.used == 0


def test_unlinked_file_forgotten_before_release_is_dropped(client: Client,
                                                           session: FuseSession,
                                                           store: PageStore,
                                                           vmdir: int) -> None:
    nodeid, fh = ram_file(client, vmdir)
    assert client.write(nodeid, 0, b"x").ok
    assert client.unlink(vmdir, "pc.ram").ok
    assert client.forget(nodeid, 1) is None   # FORGETs are queued ahead of RELEASE
    assert nodeid in session.tree.nodes       # still open: kept
    assert client.release(nodeid, fh).ok
    assert nodeid not in session.tree.nodes
    assert store.used == 0


def test_rename(client: Client, session: FuseSession, vmdir: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    qemu_node = session.tree.get(vmdir).parent
    assert qemu_node is not None
    qemu = qemu_node.nodeid
    assert client.rename(vmdir, "pc.ram", vmdir, "other.ram").ok
    assert client.lookup(vmdir, "pc.ram").error == -errno.ENOENT
    assert client.lookup(vmdir, "other.ram").entry()[0] == nodeid
    # across directories
    assert client.rename(vmdir, "other.ram", qemu, "moved").ok
    assert session.tree.get(nodeid).path() == "libvirt/qemu/moved"
    # missing source
    assert client.rename(vmdir, "nope", vmdir, "x").error == -errno.ENOENT
    # target directory that is a file
    assert client.rename(qemu, "moved", nodeid, "x").error == -errno.ENOTDIR


def test_rename_replaces_target(client: Client, session: FuseSession, vmdir: int) -> None:
    a, _ = ram_file(client, vmdir, n="a")
    b, _ = ram_file(client, vmdir, n="b")
    assert client.rename(vmdir, "a", vmdir, "b").ok
    assert client.lookup(vmdir, "b").entry()[0] == a
    assert session.tree.get(b).path() is None


def test_rename2_noreplace(client: Client, vmdir: int) -> None:
    a, _ = ram_file(client, vmdir, n="a")
    ram_file(client, vmdir, n="b")
    assert client.rename2(vmdir, "a", vmdir, "b", P.RENAME_NOREPLACE).error == -errno.EEXIST
    assert client.lookup(vmdir, "a").entry()[0] == a
    assert client.rename2(vmdir, "a", vmdir, "c", P.RENAME_NOREPLACE).ok
    assert client.lookup(vmdir, "c").entry()[0] == a
    assert client.rename2(vmdir, "c", vmdir, "d", 0).ok


@pytest.mark.parametrize("flags", [P.RENAME_EXCHANGE, P.RENAME_EXCHANGE | P.RENAME_NOREPLACE,
                                   1 << 2])
def test_rename2_unsupported_flags(client: Client, vmdir: int, flags: int) -> None:
    ram_file(client, vmdir, n="a")
    ram_file(client, vmdir, n="b")
    assert client.rename2(vmdir, "a", vmdir, "b", flags).error == -errno.EINVAL


def test_rename_dir_into_itself_is_einval(client: Client, session: FuseSession,
                                          vmdir: int) -> None:
    libvirt = client.lookup(P.ROOT_ID, "libvirt").entry()[0]
    assert client.rename(P.ROOT_ID, "libvirt", vmdir, "x").error == -errno.EINVAL
    assert client.rename(P.ROOT_ID, "libvirt", libvirt, "x").error == -errno.EINVAL
    assert session.tree.get(vmdir).path() == "libvirt/qemu/1-vm"


def test_rename_type_mismatch(client: Client, vmdir: int) -> None:
    ram_file(client, vmdir, n="f")
    assert client.mkdir(vmdir, "d").ok
    assert client.mkdir(vmdir, "full").ok
    full = client.lookup(vmdir, "full").entry()[0]
    assert client.mkdir(full, "x").ok
    assert client.rename(vmdir, "f", vmdir, "d").error == -errno.EISDIR
    assert client.rename(vmdir, "d", vmdir, "f").error == -errno.ENOTDIR
    assert client.rename(vmdir, "d", vmdir, "full").error == -errno.ENOTEMPTY


# -- STATFS, FORGET, INTERRUPT, ENOSYS -------------------------------------------------


def test_statfs_reports_store_capacity(client: Client, store: PageStore, vmdir: int) -> None:
    r = client.statfs()
    blocks, bfree, bavail, _files, _ffree, bsize, namelen, frsize, _pad = \
        P.KSTATFS.unpack(r.payload)
    assert (blocks, bfree, bavail) == (STORE_PAGES, STORE_PAGES, STORE_PAGES)
    assert bsize == frsize == PG and namelen == 255
    nodeid, _ = ram_file(client, vmdir)
    assert client.write(nodeid, 0, b"x" * 2 * PG).ok
    blocks, bfree, bavail, *_ = P.KSTATFS.unpack(client.statfs().payload)
    assert (blocks, bfree, bavail) == (STORE_PAGES, STORE_PAGES - 2, STORE_PAGES - 2)


def test_forget_batch_forget_interrupt_take_no_reply(client: Client, session: FuseSession,
                                                     vmdir: int) -> None:
    a, _ = ram_file(client, vmdir, n="a", size=0)
    b, _ = ram_file(client, vmdir, n="b", size=0)
    assert session.tree.get(a).nlookup == 1
    assert client.lookup(vmdir, "a").ok
    assert session.tree.get(a).nlookup == 2
    assert client.forget(a, 1) is None
    assert session.tree.get(a).nlookup == 1
    assert client.batch_forget([(a, 1), (b, 1), (999, 3)]) is None
    assert session.tree.get(a).nlookup == 0 and session.tree.get(b).nlookup == 0
    assert client.raw(build(P.Opcode.INTERRUPT, P.FORGET_IN.pack(1))) is None
    assert client.raw(build(P.Opcode.NOTIFY_REPLY, b"")) is None
    assert session.errors == 0


def test_malformed_forgets_take_no_reply(client: Client, session: FuseSession) -> None:
    assert client.raw(build(P.Opcode.FORGET, b"\0" * 4, 5)) is None
    body = P.BATCH_FORGET_IN.pack(3, 0) + P.FORGET_ONE.pack(5, 1)
    assert client.raw(build(P.Opcode.BATCH_FORGET, body, 0)) is None
    assert session.errors == 2


def test_forget_of_root_is_ignored(client: Client, session: FuseSession) -> None:
    assert client.forget(P.ROOT_ID, 100) is None
    assert session.tree.root.nlookup == 1
    assert client.getattr(P.ROOT_ID).ok


@pytest.mark.parametrize("opcode", [9999, P.Opcode.GETXATTR, P.Opcode.SETXATTR,
                                    P.Opcode.LISTXATTR, P.Opcode.STATX, P.Opcode.SYMLINK,
                                    P.Opcode.LINK, P.Opcode.READDIRPLUS, P.Opcode.TMPFILE,
                                    P.Opcode.ACCESS])
def test_unknown_opcodes_are_enosys(client: Client, session: FuseSession, opcode: int) -> None:
    assert client.call(opcode, b"\0" * 64).error == -errno.ENOSYS
    assert session.errors == 0


# -- malformed requests -------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 16, 39])
def test_truncated_header_takes_no_reply(client: Client, session: FuseSession, n: int) -> None:
    assert client.raw(build(P.Opcode.STATFS)[:n]) is None
    assert session.errors == 1


def test_header_length_mismatch_is_einval(client: Client, session: FuseSession) -> None:
    buf = build(P.Opcode.STATFS, b"\0" * 8, unique=4711, length=100)
    r = decode(client.raw(buf))
    assert (r.error, r.unique) == (-errno.EINVAL, 4711)
    assert session.errors == 1


def test_extension_beyond_request_is_einval(client: Client, session: FuseSession) -> None:
    r = decode(client.raw(build(P.Opcode.STATFS, b"\0" * 8, unique=5, extlen=2)))
    assert (r.error, r.unique) == (-errno.EINVAL, 5)
    assert session.errors == 1


@pytest.mark.parametrize("opcode", [P.Opcode.READ, P.Opcode.WRITE, P.Opcode.SETATTR,
                                    P.Opcode.MKDIR, P.Opcode.CREATE, P.Opcode.OPEN,
                                    P.Opcode.RELEASE, P.Opcode.RENAME, P.Opcode.RENAME2,
                                    P.Opcode.FALLOCATE, P.Opcode.READDIR, P.Opcode.MKNOD])
def test_short_body_is_einval(client: Client, session: FuseSession, vmdir: int,
                              opcode: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    errors = session.errors
    target = vmdir if opcode in (P.Opcode.MKDIR, P.Opcode.CREATE, P.Opcode.RENAME,
                                 P.Opcode.RENAME2, P.Opcode.READDIR, P.Opcode.MKNOD) else nodeid
    assert client.call(opcode, b"\0" * 4, target).error == -errno.EINVAL
    assert session.errors == errors + 1


@pytest.mark.parametrize("delta", [-1, 1])
def test_write_length_differs_from_size(client: Client, session: FuseSession, store: PageStore,
                                        vmdir: int, delta: int) -> None:
    nodeid, _ = ram_file(client, vmdir)
    assert client.write(nodeid, 0, b"x" * 100, size=100 + delta).error == -errno.EINVAL
    assert session.errors == 1
    assert store.used == 0


@pytest.mark.parametrize("body", [name("ok")[:-1], b"a/b\0", b"\0", b"x" * 300 + b"\0"])
def test_bad_name_is_einval(client: Client, session: FuseSession, body: bytes) -> None:
    assert client.call(P.Opcode.LOOKUP, body).error == -errno.EINVAL
    assert client.call(P.Opcode.MKDIR, P.MKDIR_IN.pack(0o755, 0) + body).error == -errno.EINVAL
    assert client.call(P.Opcode.RENAME, P.RENAME_IN.pack(1) + b"a\0" + body).error \
        == -errno.EINVAL
    assert session.errors == 3
    assert [e[2] for e in client.readdir(P.ROOT_ID).dirents()] == [".", ".."]


def test_handler_exception_is_eio(client: Client, session: FuseSession,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(req: P.Request, ctx: ReaderContext) -> None:
        raise RuntimeError("handler bug")

    monkeypatch.setitem(session._handlers, P.Opcode.STATFS, boom)
    monkeypatch.setitem(session._handlers, P.Opcode.FORGET, boom)
    r = client.statfs()
    assert r.error == -errno.EIO
    assert session.errors == 1
    assert client.forget(2, 1) is None   # no reply for a no-reply opcode, even on failure
    assert session.errors == 2
    assert client.getattr(P.ROOT_ID).ok  # the session keeps serving


# -- fuzz ----------------------------------------------------------------------


def _check_reply(parts: Parts, buf: bytes) -> None:
    if parts is None:
        return
    raw = b"".join(bytes(p) for p in parts)
    assert len(raw) >= P.OUT_HEADER.size
    length, error, unique = P.OUT_HEADER.unpack_from(raw)
    assert length == len(raw)
    assert error <= 0
    if error:
        assert length == P.OUT_HEADER.size
    if len(buf) >= P.IN_HEADER.size:
        assert unique == P.IN_HEADER.unpack_from(buf)[2]
    else:
        pytest.fail("a reply to a request without a header")


def _fuzz_session() -> tuple[FuseSession, ReaderContext]:
    s = FuseSession(PageStore(16), SessionConfig(max_readahead=4096))
    c = Client(s)
    assert c.init().ok
    d = mkdirs(c, "libvirt", "qemu", "1-vm")
    nodeid, _ = ram_file(c, d, size=64 * PG)
    assert (d, nodeid) == (4, 5)
    return s, c.ctx


_FUZZ_SETTINGS = settings(max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


@_FUZZ_SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_fuzz_raw_bytes(bufs: list[bytes]) -> None:
    s, ctx = _fuzz_session()
    for buf in bufs:
        _check_reply(s.handle(memoryview(bytearray(buf)), ctx), buf)


# Opcodes whose random bodies may resize a file to terabytes (SETATTR, FALLOCATE) are
# left to the raw fuzz above, which rarely forms a valid header.
_OPCODES = [int(o) for o in P.Opcode if o not in (P.Opcode.SETATTR, P.Opcode.FALLOCATE)]


@_FUZZ_SETTINGS
@given(st.lists(st.tuples(st.one_of(st.sampled_from(_OPCODES), st.integers(0, 2**32 - 1)),
                          st.integers(0, 8), st.integers(0, 2**64 - 1),
                          st.integers(0, 3), st.binary(max_size=200)),
                min_size=1, max_size=8))
def test_fuzz_well_framed_requests(reqs: list[tuple[int, int, int, int, bytes]]) -> None:
    s, ctx = _fuzz_session()
    for opcode, nodeid, unique, extlen, body in reqs:
        buf = build(opcode, body, nodeid=nodeid, unique=unique, extlen=extlen)
        _check_reply(s.handle(memoryview(bytearray(buf)), ctx), buf)
