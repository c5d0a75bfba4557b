"""FUSE request handling: one request in, one reply out, no device I/O.

:class:`FuseSession` answers every opcode QEMU and libvirt use on a
``memory_backing_dir`` (namespace operations, READ as page-in, WRITE as
writeback and launder) and ENOSYS to the rest. Malformed or unexpected
requests get an error reply; a handler bug gets EIO and a log line, never a
dead reader thread. The device loop lives in ``server.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nova_ipmigrate.memfs import protocol as P
from nova_ipmigrate.memfs.metrics import LatencyHistogram
from nova_ipmigrate.memfs.pages import PageTable, WriteRejected
from nova_ipmigrate.memfs.ramfile import RamFile
from nova_ipmigrate.memfs.remote import RemoteUnavailable
from nova_ipmigrate.memfs.store import PageStore, StoreFull
from nova_ipmigrate.memfs.tree import FsError, Inode, Tree

LOG = logging.getLogger(__name__)
#: how often one page-in follows a page whose holder changes under it
_REDIRECTS = 4

Reply = Sequence[bytes | memoryview]
#: attributes and names change only through this daemon: cache them long
CACHE_VALID_S = 3600
MAX_WRITE = 128 * 1024
READ_BUFFER = MAX_WRITE + 4096


@dataclass
class SessionConfig:
    max_readahead: int = 0          # bytes announced in INIT
    default_resident_limit_pages: int = 0
    #: page-ins allowed to wait for the evictor at once (readers - 1)
    throttle_slots: int = 1
    victim_policy: str = "recency"
    throttle_max_wait_s: float = 0.05


class ReaderContext:
    """Per-reader-thread scratch space for READ replies."""

    def __init__(self) -> None:
        self.out = memoryview(bytearray(READ_BUFFER))


class FuseSession:
    """Protocol state and opcode handlers of one memfs mount."""

    def __init__(self, store: PageStore, config: SessionConfig,
                 own_tid: Callable[[int], bool] = lambda pid: False,
                 on_pressure: Callable[[], None] = lambda: None) -> None:
        self.tree = Tree()
        self.store = store
        self.config = config
        self.own_tid = own_tid      # is this request from the daemon itself?
        self.on_pressure = on_pressure  # a READ took a RAM file over its limit
        self.proto_minor = 0
        self.initialized = False
        self.destroyed = False
        self.read_latency = LatencyHistogram()
        self.errors = 0             # malformed requests and handler failures
        self._fh = 0
        self._throttle = threading.BoundedSemaphore(max(1, config.throttle_slots))
        self.throttled = 0          # page-ins that waited for the evictor
        self.redirected = 0         # page-ins asked again of a page's new holder (part moves)
        self._open_files: dict[int, tuple[Inode, bool]] = {}
        self._handlers: dict[int, Callable[[P.Request, ReaderContext], Reply | None]] = {
            P.Opcode.INIT: self._init, P.Opcode.DESTROY: self._destroy,
            P.Opcode.LOOKUP: self._lookup, P.Opcode.FORGET: self._forget,
            P.Opcode.BATCH_FORGET: self._batch_forget, P.Opcode.GETATTR: self._getattr,
            P.Opcode.SETATTR: self._setattr, P.Opcode.MKDIR: self._mkdir,
            P.Opcode.MKNOD: self._mknod, P.Opcode.CREATE: self._create,
            P.Opcode.UNLINK: self._unlink, P.Opcode.RMDIR: self._rmdir,
            P.Opcode.RENAME: self._rename, P.Opcode.RENAME2: self._rename2,
            P.Opcode.OPEN: self._open, P.Opcode.READ: self._read, P.Opcode.WRITE: self._write,
            P.Opcode.RELEASE: self._release, P.Opcode.FLUSH: self._ok,
            P.Opcode.FSYNC: self._ok, P.Opcode.FSYNCDIR: self._ok,
            P.Opcode.OPENDIR: self._opendir, P.Opcode.READDIR: self._readdir,
            P.Opcode.RELEASEDIR: self._ok, P.Opcode.STATFS: self._statfs,
            P.Opcode.FALLOCATE: self._fallocate,
            P.Opcode.INTERRUPT: self._noreply, P.Opcode.NOTIFY_REPLY: self._noreply,
        }

    # -- dispatch -------------------------------------------------------------

    def handle(self, buf: memoryview, ctx: ReaderContext) -> Reply | None:
        """The reply to one raw request (None: the request takes no reply)."""
        try:
            req = P.Request.parse(buf)
        except P.ProtocolError as exc:
            self.errors += 1
            LOG.warning("malformed FUSE request: %s", exc)
            if len(buf) >= P.IN_HEADER.size:
                unique = P.IN_HEADER.unpack_from(buf)[2]
                return [P.error_reply(unique, errno.EINVAL)]
            return None
        if not self.initialized and req.opcode != P.Opcode.INIT:
            self.errors += 1
            return None if req.opcode in P.NO_REPLY else [P.error_reply(req.unique, errno.EIO)]
        handler = self._handlers.get(req.opcode)
        if handler is None:
            if req.opcode in P.NO_REPLY:
                return None
            return [P.error_reply(req.unique, errno.ENOSYS)]
        try:
            return handler(req, ctx)
        except FsError as exc:
            return [P.error_reply(req.unique, exc.errno)]
        except P.ProtocolError as exc:
            self.errors += 1
            LOG.warning("malformed FUSE request: %s", exc)
            return None if req.opcode in P.NO_REPLY else [P.error_reply(req.unique, errno.EINVAL)]
        except Exception:
            self.errors += 1
            LOG.exception("FUSE %s failed", P._opname(req.opcode))
            return None if req.opcode in P.NO_REPLY else [P.error_reply(req.unique, errno.EIO)]

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def _reply(req: P.Request, *parts: bytes | memoryview) -> Reply:
        n = sum(len(p) for p in parts)
        return [P.out_header(req.unique, n), *parts]

    @staticmethod
    def _attr(node: Inode) -> bytes:
        size = node.size
        at, mt, ct = node.atime, node.mtime, node.ctime
        return P.ATTR.pack(node.nodeid, size, (size + 511) // 512, int(at), int(mt), int(ct),
                           int(at % 1 * 1e9), int(mt % 1 * 1e9), int(ct % 1 * 1e9),
                           node.mode, node.nlink, node.uid, node.gid, 0, P.PAGE_SIZE, 0)

    def _entry(self, node: Inode) -> bytes:
        node.nlookup += 1
        return P.ENTRY_OUT.pack(node.nodeid, 0, CACHE_VALID_S, CACHE_VALID_S, 0, 0) \
            + self._attr(node)

    def _attr_out(self, node: Inode) -> bytes:
        return P.ATTR_OUT.pack(CACHE_VALID_S, 0, 0) + self._attr(node)

    def _ram(self, req: P.Request) -> tuple[Inode, RamFile]:
        node = self.tree.get(req.nodeid)
        if node.ram is None:
            raise FsError(errno.EISDIR)
        return node, node.ram

    def _ok(self, req: P.Request, ctx: ReaderContext) -> Reply:
        return [P.out_header(req.unique, 0)]

    def _noreply(self, req: P.Request, ctx: ReaderContext) -> None:
        return None

    # -- session --------------------------------------------------------------

    def _init(self, req: P.Request, ctx: ReaderContext) -> Reply:
        major, minor, max_readahead, flags = req.unpack(P.INIT_IN)
        if major != P.KERNEL_VERSION or minor < P.MIN_SUPPORTED_MINOR:
            LOG.error("kernel FUSE protocol %d.%d is not supported", major, minor)
            return [P.error_reply(req.unique, errno.EPROTO)]
        self.proto_minor = min(minor, P.KERNEL_MINOR_VERSION)
        want = P.ASYNC_READ | P.BIG_WRITES | P.PARALLEL_DIROPS
        out = P.INIT_OUT.pack(P.KERNEL_VERSION, self.proto_minor,
                              min(self.config.max_readahead, max_readahead),
                              flags & want, 16, 12, MAX_WRITE, 1, 0, 0, 0)
        self.initialized = True
        LOG.info("FUSE session up: protocol 7.%d (kernel 7.%d), max_readahead %d",
                 self.proto_minor, minor, min(self.config.max_readahead, max_readahead))
        return self._reply(req, out)

    def _destroy(self, req: P.Request, ctx: ReaderContext) -> Reply:
        self.destroyed = True
        return [P.out_header(req.unique, 0)]

    # -- names ----------------------------------------------------------------

    def _lookup(self, req: P.Request, ctx: ReaderContext) -> Reply:
        (name,) = req.names(0, 1)
        with self.tree.lock:
            node = self.tree.child(self.tree.dir(req.nodeid), name)
            return self._reply(req, self._entry(node))

    def _forget(self, req: P.Request, ctx: ReaderContext) -> None:
        (count,) = req.unpack(P.FORGET_IN)
        with self.tree.lock:
            self.tree.forget(req.nodeid, count)

    def _batch_forget(self, req: P.Request, ctx: ReaderContext) -> None:
        count, _ = req.unpack(P.BATCH_FORGET_IN)
        body = req.body[P.BATCH_FORGET_IN.size:]
        if len(body) < count * P.FORGET_ONE.size:
            raise P.ProtocolError("BATCH_FORGET shorter than its count")
        with self.tree.lock:
            for i in range(count):
                nodeid, nlookup = P.FORGET_ONE.unpack_from(body, i * P.FORGET_ONE.size)
                self.tree.forget(nodeid, nlookup)

    def _getattr(self, req: P.Request, ctx: ReaderContext) -> Reply:
        with self.tree.lock:
            return self._reply(req, self._attr_out(self.tree.get(req.nodeid)))

    def _setattr(self, req: P.Request, ctx: ReaderContext) -> Reply:
        (valid, _, _fh, size, _lo, atime, mtime, _ct, atimens, mtimens, _ctn, mode, _u4,
         uid, gid, _u5) = req.unpack(P.SETATTR_IN)
        with self.tree.lock:
            node = self.tree.get(req.nodeid)
            if valid & P.FATTR_SIZE:
                if node.ram is None:
                    raise FsError(errno.EISDIR)
                node.ram.resize(size)
            if valid & P.FATTR_MODE:
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
            if valid & P.FATTR_UID:
                node.uid = uid
            if valid & P.FATTR_GID:
                node.gid = gid
            now = time.time()
            if valid & P.FATTR_ATIME:
                node.atime = atime + atimens / 1e9
            if valid & P.FATTR_ATIME_NOW:
                node.atime = now
            if valid & P.FATTR_MTIME:
                node.mtime = mtime + mtimens / 1e9
            if valid & P.FATTR_MTIME_NOW:
                node.mtime = now
            node.ctime = now
            return self._reply(req, self._attr_out(node))

    def _new_node(self, req: P.Request, name: str, mode: int) -> Inode:
        with self.tree.lock:
            parent = self.tree.dir(req.nodeid)
            node = self.tree.add(parent, name, mode, req.uid, req.gid)
            if not node.is_dir:
                node.ram = RamFile(node.nodeid, self.store,
                                   self.config.default_resident_limit_pages)
                node.ram.victim_policy = self.config.victim_policy
            return node

    def _mkdir(self, req: P.Request, ctx: ReaderContext) -> Reply:
        mode, umask = req.unpack(P.MKDIR_IN)
        (name,) = req.names(P.MKDIR_IN.size, 1)
        node = self._new_node(req, name, stat.S_IFDIR | (mode & ~umask & 0o7777))
        with self.tree.lock:
            return self._reply(req, self._entry(node))

    def _mknod(self, req: P.Request, ctx: ReaderContext) -> Reply:
        mode, _rdev, umask, _ = req.unpack(P.MKNOD_IN)
        (name,) = req.names(P.MKNOD_IN.size, 1)
        if not stat.S_ISREG(mode):
            raise FsError(errno.EPERM, "memfs holds directories and RAM files only")
        node = self._new_node(req, name, stat.S_IFREG | (mode & ~umask & 0o7777))
        with self.tree.lock:
            return self._reply(req, self._entry(node))

    def _create(self, req: P.Request, ctx: ReaderContext) -> Reply:
        flags, mode, umask, _ = req.unpack(P.CREATE_IN)
        (name,) = req.names(P.CREATE_IN.size, 1)
        if not stat.S_ISREG(mode):
            raise FsError(errno.EPERM, "memfs holds directories and RAM files only")
        node = self._new_node(req, name, stat.S_IFREG | (mode & ~umask & 0o7777))
        with self.tree.lock:
            entry = self._entry(node)
            fh = self._register_open(node, req)
        return self._reply(req, entry, P.OPEN_OUT.pack(fh, P.OPEN_FLAGS, 0))

    def _unlink(self, req: P.Request, ctx: ReaderContext) -> Reply:
        (name,) = req.names(0, 1)
        with self.tree.lock:
            parent = self.tree.dir(req.nodeid)
            node = self.tree.child(parent, name)
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if node.pinned:
                raise FsError(errno.EBUSY, "a RAM file managed by the agent")
            self.tree.detach(parent, name)
        return [P.out_header(req.unique, 0)]

    def _rmdir(self, req: P.Request, ctx: ReaderContext) -> Reply:
        (name,) = req.names(0, 1)
        with self.tree.lock:
            parent = self.tree.dir(req.nodeid)
            node = self.tree.child(parent, name)
            if not node.is_dir:
                raise FsError(errno.ENOTDIR)
            if node.children:
                raise FsError(errno.ENOTEMPTY)
            self.tree.detach(parent, name)
        return [P.out_header(req.unique, 0)]

    def _do_rename(self, req: P.Request, newdir: int, flags: int, offset: int) -> Reply:
        if flags & ~P.RENAME_NOREPLACE:
            raise FsError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        name, newname = req.names(offset, 2)
        with self.tree.lock:
            self.tree.rename(self.tree.dir(req.nodeid), name, self.tree.dir(newdir), newname,
                             bool(flags & P.RENAME_NOREPLACE))
        return [P.out_header(req.unique, 0)]

    def _rename(self, req: P.Request, ctx: ReaderContext) -> Reply:
        (newdir,) = req.unpack(P.RENAME_IN)
        return self._do_rename(req, newdir, 0, P.RENAME_IN.size)

    def _rename2(self, req: P.Request, ctx: ReaderContext) -> Reply:
        newdir, flags, _ = req.unpack(P.RENAME2_IN)
        return self._do_rename(req, newdir, flags, P.RENAME2_IN.size)

    # -- files ----------------------------------------------------------------

    def _register_open(self, node: Inode, req: P.Request) -> int:
        own = self.own_tid(req.pid)
        self._fh += 1
        self._open_files[self._fh] = (node, own)
        if node.ram is not None and not own:
            node.ram.user_opens += 1
        return self._fh

    def _open(self, req: P.Request, ctx: ReaderContext) -> Reply:
        flags, _ = req.unpack(P.OPEN_IN)
        with self.tree.lock:
            node = self.tree.get(req.nodeid)
            if node.is_dir:
                raise FsError(errno.EISDIR)
            if flags & os.O_TRUNC and node.ram is not None and node.ram.size:
                raise FsError(errno.EPERM, "RAM files are not truncated on open")
            fh = self._register_open(node, req)
        return self._reply(req, P.OPEN_OUT.pack(fh, P.OPEN_FLAGS, 0))

    def _release(self, req: P.Request, ctx: ReaderContext) -> Reply:
        fh, _flags, _rflags, _lo = req.unpack(P.RELEASE_IN)
        with self.tree.lock:
            entry = self._open_files.pop(fh, None)
            if entry is not None:
                node, own = entry
                if node.ram is not None and not own:
                    node.ram.user_opens -= 1
                self.tree.maybe_drop(node)
        return [P.out_header(req.unique, 0)]

    def _read(self, req: P.Request, ctx: ReaderContext) -> Reply:
        t0 = time.perf_counter_ns()
        _fh, offset, size, _rf, _lo, _fl, _ = req.unpack(P.READ_IN)
        _node, ram = self._ram(req)
        table = ram.table
        if table is None or offset >= ram.size or size == 0:
            return [P.out_header(req.unique, 0)]
        size = min(size, ram.size - offset, MAX_WRITE)
        gate = ram.incoming
        if gate is not None:
            try:
                gate.wait()
            except OSError as exc:
                return [P.error_reply(req.unique, exc.errno or errno.EIO)]
        if self._throttle.acquire(blocking=False):
            try:
                if ram.throttle(self.config.throttle_max_wait_s):
                    self.throttled += 1
            finally:
                self._throttle.release()
        first = offset // P.PAGE_SIZE
        last = (offset + size - 1) // P.PAGE_SIZE
        count = last - first + 1
        out = ctx.out
        remote = table.read(first, count, out)
        if remote:
            err = self._fetch_remote(ram, table, first, remote, out)
            if err:
                return [P.error_reply(req.unique, err)]
        if ram.check_limit():
            self.on_pressure()
        skip = offset - first * P.PAGE_SIZE
        reply = self._reply(req, out[skip:skip + size])
        self.read_latency.record_ns(time.perf_counter_ns() - t0)
        return reply

    def _fetch_remote(self, ram: RamFile, table: PageTable, first: int, pages: list[int],
                      out: memoryview) -> int:
        """Page-in from sub-hosts; 0, or an errno for the READ (never wrong data).

        A page whose holder changed while it was being fetched (a part move
        switched it, or brought it home) is asked of its new holder, or read
        here: the directory is asked again, never the old holder's answer used.
        """
        if ram.remote is None or ram.vm is None:
            LOG.error("pages %s are held by sub-hosts but no remote paging is set", pages[:8])
            return errno.EIO
        pending = pages
        for attempt in range(_REDIRECTS + 1):
            retry: list[int] = []
            by_holder: dict[int, list[int]] = {}
            for p, h in zip(pending, table.holder_of(pending), strict=True):
                by_holder.setdefault(h, []).append(p)
            for holder, group in by_holder.items():
                if holder == 0:
                    # Not remote any more (brought home meanwhile): read it here.
                    for p in group:
                        i = p - first
                        retry += table.read(p, 1, out[i * P.PAGE_SIZE:(i + 1) * P.PAGE_SIZE])
                    continue
                try:
                    data = ram.remote.fetch(ram.vm, holder, group)
                except RemoteUnavailable as exc:
                    moved = [p for p, h in zip(group, table.holder_of(group), strict=True)
                             if h != holder]
                    if moved and attempt < _REDIRECTS:
                        self.redirected += len(moved)
                        retry += moved
                        gone = set(moved)
                        group = [p for p in group if p not in gone]
                    if group:
                        ram.lost_pages.update(group)
                        LOG.error("instance %s is broken: pages %s cannot be paged in from "
                                  "%s: %s", ram.vm, group[:16],
                                  ram.remote.holder_name(holder), exc)
                        return errno.EIO
                    continue
                for p, d in zip(group, data, strict=True):
                    err = self._fill(table, p, d, holder)
                    if err < 0:
                        self.redirected += 1
                        retry.append(p)
                        continue
                    if err:
                        return err
                    i = p - first
                    out[i * P.PAGE_SIZE:(i + 1) * P.PAGE_SIZE] = d
            if not retry:
                return 0
            pending = retry
        LOG.error("pages %s kept moving while being paged in", pending[:16])
        return errno.EIO

    @staticmethod
    def _fill(table: PageTable, page: int, data: bytes, holder: int) -> int:
        """0: page filled; -1: it is no longer at ``holder`` (ask again); else an errno."""
        for attempt in range(100):
            try:
                return 0 if table.fill_remote(page, data, holder) else -1
            except StoreFull:
                # The pusher frees local slots; wait a little for it.
                if attempt == 99:
                    LOG.error("page-in of page %d: local page store full", page)
                    return errno.ENOMEM
                time.sleep(0.01)
        return errno.ENOMEM

    def _write(self, req: P.Request, ctx: ReaderContext) -> Reply:
        _fh, offset, size, _wflags, _lo, _fl, _ = req.unpack(P.WRITE_IN)
        data = req.body[P.WRITE_IN.size:]
        if len(data) != size:
            raise P.ProtocolError(f"WRITE carries {len(data)} bytes, header says {size}")
        _node, ram = self._ram(req)
        table = ram.table
        if table is None or offset + size > ram.size:
            raise FsError(errno.EFBIG, "write beyond the end of a RAM file")
        pos = 0
        try:
            while pos < size:
                page, off = divmod(offset + pos, P.PAGE_SIZE)
                n = min(P.PAGE_SIZE - off, size - pos)
                table.write(page, off, data[pos:pos + n])
                pos += n
        except StoreFull as exc:
            LOG.error("WRITE at %d: %s", offset + pos, exc)
            raise FsError(errno.ENOSPC) from exc
        except WriteRejected as exc:
            raise FsError(exc.errno) from exc
        return self._reply(req, P.WRITE_OUT.pack(size, 0))

    def _fallocate(self, req: P.Request, ctx: ReaderContext) -> Reply:
        _fh, offset, length, mode, _ = req.unpack(P.FALLOCATE_IN)
        _node, ram = self._ram(req)
        if mode != 0:
            raise FsError(errno.EOPNOTSUPP)
        if offset + length > ram.size:
            with self.tree.lock:
                ram.resize(offset + length)
        return [P.out_header(req.unique, 0)]

    # -- directories ------------------------------------------------------------

    def _opendir(self, req: P.Request, ctx: ReaderContext) -> Reply:
        with self.tree.lock:
            self.tree.dir(req.nodeid)
        return self._reply(req, P.OPEN_OUT.pack(0, 0, 0))

    def _readdir(self, req: P.Request, ctx: ReaderContext) -> Reply:
        _fh, offset, size, *_ = req.unpack(P.READ_IN)
        with self.tree.lock:
            node = self.tree.dir(req.nodeid)
            parent = node.parent or node
            entries = [(node.nodeid, ".", stat.S_IFDIR), (parent.nodeid, "..", stat.S_IFDIR)]
            entries += [(c.nodeid, n, stat.S_IFMT(c.mode)) for n, c in node.children.items()]
        out = bytearray()
        for i in range(offset, len(entries)):
            ino, name, fmt = entries[i]
            rec = P.pack_dirent(ino, i + 1, name.encode("utf-8", "surrogateescape"), fmt >> 12)
            if len(out) + len(rec) > size:
                break
            out += rec
        return self._reply(req, bytes(out))

    def _statfs(self, req: P.Request, ctx: ReaderContext) -> Reply:
        cap, free = self.store.capacity, self.store.free
        st = P.KSTATFS.pack(cap, free, free, len(self.tree.nodes) + 1_000_000, 1_000_000,
                            P.PAGE_SIZE, 255, P.PAGE_SIZE, 0)
        return self._reply(req, st)

    # -- introspection ------------------------------------------------------------

    def ram_files(self) -> list[tuple[str | None, Inode]]:
        with self.tree.lock:
            return [(n.path(), n) for n in self.tree.nodes.values() if n.ram is not None]
