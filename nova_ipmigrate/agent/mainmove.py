"""Main-host moves: a split VM's vCPUs, devices and resident pages go to another host.

QEMU moves only its device state (libvirt live migration with ``x-ignore-shared``:
the RAM is a shared file on memfs, so it is not sent); memfs hands the page
directory over and the old main host's pages follow. The order, from the
findings (``qemu-libvirt-shared-ram-migration.md``):

1. The new main host's agent is told to expect the VM (:meth:`MainMoves.prepare`).
2. The old main host freezes its RAM file (no page leaves for a sub-host any
   more) and sets x-ignore-shared through the domain's extra QMP monitor, then
   runs the libvirt migration (:meth:`MainMoves.migrate`, an operation).
3. On the new main host the libvirt hook's ``start`` tells the agent the RAM
   file path of the incoming domain (it carries the new domain id): the agent
   creates it there, empty, its READs held back by a
   :class:`~nova_ipmigrate.memfs.ramfile.DirectoryGate`. The synchronous
   ``started`` hook sets x-ignore-shared there before the source sends anything.
4. The source pauses for the switchover (QMP ``STOP``); QEMU at the destination
   reads guest RAM while it loads the device state: the first READ asks the old
   main host for the directory (fabric ``GET_DIRECTORY``). The old host answers
   only once its QEMU is stopped, after sending its last stale-copy drops; pages
   it holds itself are then served by it, as a holder (:class:`Export`), the
   others by their sub-hosts, which need no telling: they serve any authenticated
   peer by VM.
5. Until the move is committed the new main host sends nothing to any holder (no
   page-out, no drop): if the destination fails, libvirt resumes the source and
   the old directory is still exact. Once libvirt reports success,
   :meth:`MainMoves.commit` lets the new main host page out again and starts
   pulling the old main host's part (an ordinary part move, with its
   consistency protocol), or a whole reintegration; its DROP_VM at the end
   releases the old RAM file.

Step 2 has two forms. :meth:`MainMoves.migrate` runs the libvirt migration itself
(``virsh migrate``). When Nova's libvirt driver runs it, the old main host's agent
only prepares its side before (:meth:`MainMoves.prepare_source`: the same freeze,
x-ignore-shared, export and STOP watch) and is told the outcome after
(:meth:`MainMoves.finish_source`: committed, or rolled back as after a failed
``virsh migrate``). Both forms register a ``main_host_migration`` operation, so the
RAM file takes no other operation meanwhile.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova_ipmigrate.agent import placement
from nova_ipmigrate.agent.remote import FabricRemotePaging, SubHost
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.errors import RemoteBadRequestError, RemoteInternalError
from nova_ipmigrate.hooks.libvirt_qemu import SHORT_NAME, ram_file_path
from nova_ipmigrate.memfs.control import ControlError, _str_arg
from nova_ipmigrate.memfs.pages import HERE, contiguous_runs
from nova_ipmigrate.memfs.protocol import PAGE_SIZE
from nova_ipmigrate.memfs.ramfile import DirectoryGate, RamFile
from nova_ipmigrate.migration.operations import Operation, OperationError, Operations, OpState
from nova_ipmigrate.migration.transfer import Endpoint
from nova_ipmigrate.qemu.qmp import QMPClient, QMPError, QMPEvent

LOG = logging.getLogger(__name__)

#: where libvirt 9 puts a domain's RAM file under memory_backing_dir
#: (qemuGetMemoryBackingDomainPath: "<id>-<name, 20 characters>/<alias>"):
#: SHORT_NAME and ram_file_path live with the hook, which the driver shares
IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]
_HERE_MASK = bytes(1 if c == HERE else 0 for c in range(256))


@dataclass
class LibvirtConfig:
    connection_uri: str = "qemu:///system"
    peer_uri: str = "qemu+tcp://{address}/system"
    migrate_uri: str = "tcp://{address}"
    migration_timeout: float = 300.0
    directory_timeout: float = 20.0
    virsh: str = "virsh"


@dataclass
class Domain:
    """A libvirt domain of this host as the hook reported it."""

    vm: uuid.UUID
    name: str
    path: str            # its RAM file, relative to the memfs mount
    qmp: str | None      # the extra QMP monitor (unix socket) of its QEMU



class Export:
    """The old main host's side of a move: its frozen RAM file, served as a holder."""

    def __init__(self, vm: uuid.UUID, path: str, ram: RamFile, mountpoint: Path) -> None:
        self.vm = vm
        self.path = path
        self.ram = ram
        self.mountpoint = mountpoint
        #: the source QEMU is paused for the switchover (QMP STOP, no RESUME since)
        self.stopped = threading.Event()
        self.stopped_at: float | None = None
        #: libvirt reported success: the source never runs again
        self.committed = False
        self.directory_at: float | None = None
        self._here: bytearray | None = None   # 1: a page this host serves
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.served = 0
        self.ended = False
        #: the RAM file's resident limit before the hand-over (lifted while serving)
        self.saved_limit: int | None = None

    def directory(self, timeout: float) -> tuple[bytes, bytes]:
        """Wait for the source to stop, send the last drops, and freeze the directory."""
        if not self.stopped.wait(timeout):
            raise RemoteInternalError(f"the source QEMU of {self.vm} is not paused for the "
                                  f"switchover after {timeout:.0f}s")
        ram, table, remote = self.ram, self.ram.table, self.ram.remote
        if table is None or not isinstance(remote, FabricRemotePaging):
            raise RemoteBadRequestError(f"{self.path} is not a split VM's RAM file")
        with ram.pager_lock:   # no push in flight; none starts (frozen)
            for holder, pages in table.take_drops().items():
                remote.drop(self.vm, holder, pages)
            codes = table.directory()
        holders = {str(h): {"name": n, "address": remote.sub_hosts[h - 1].address,
                            "port": remote.sub_hosts[h - 1].port}
                   for h, n in remote.active_holders().items()}
        used = [c for c in range(1, HERE) if codes.find(bytes([c])) >= 0]
        stray = [c for c in used if str(c) not in holders]
        if stray:  # a retired holder still named: never expected
            raise RemoteBadRequestError(f"directory of {self.vm} names retired holders {stray}")
        with self._lock:
            self._here = bytearray(codes.translate(_HERE_MASK))
            if self._fd is None:
                self._fd = os.open(self.mountpoint / self.path, os.O_RDONLY | os.O_CLOEXEC)
            if self.saved_limit is None:
                # Serving the pages reads the paged-out ones back in: with the guest's
                # limit every such read would wait for the evictor (throttle).
                self.saved_limit = ram.resident_limit_pages
                ram.set_resident_limit(0)
        self.directory_at = time.time()
        head = json.dumps({"npages": len(codes), "holders": holders,
                           "stopped_at": self.stopped_at}).encode()
        LOG.info("main-host move of %s: directory handed over (%d pages here, %d elsewhere)",
                 self.vm, self._here.count(1), len(codes) - codes.count(0)
                 - self._here.count(1))
        return head, codes

    def read(self, pages: Sequence[int]) -> list[bytes | None]:
        """The content of ``pages`` this host holds (None: it does not)."""
        with self._lock:
            here, fd = self._here, self._fd
            if here is None or fd is None or not self.stopped.is_set() and not self.committed:
                return [None] * len(pages)
            mine = [p for p in pages if 0 <= p < len(here) and here[p]]
        out: dict[int, bytes] = {}
        for first, count in contiguous_runs(sorted(mine)):
            buf = bytearray(count * PAGE_SIZE)
            got = os.preadv(fd, [buf], first * PAGE_SIZE)
            if got != len(buf):
                raise OSError(errno.EIO, f"short read of pages {first}+{count}: {got}")
            for i in range(count):
                out[first + i] = bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        self.served += len(out)
        return [out.get(p) for p in pages]

    def drop(self, pages: Sequence[int]) -> None:
        with self._lock:
            if self._here is not None:
                for p in pages:
                    if 0 <= p < len(self._here):
                        self._here[p] = 0

    @property
    def held(self) -> int:
        with self._lock:
            return self._here.count(1) if self._here is not None else 0

    def close(self, rolled_back: bool = False) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            self.ended = True
            if rolled_back and self.saved_limit is not None:
                self.ram.set_resident_limit(self.saved_limit)   # the VM goes on here
                self.saved_limit = None
        if fd is not None:
            os.close(fd)


@dataclass
class Incoming:
    """The new main host's side, from prepare to commit."""

    vm: uuid.UUID
    size: int
    resident_limit: int
    source: SubHost
    prepared_at: float = field(default_factory=time.time)
    path: str | None = None
    ram: RamFile | None = None
    backend: FabricRemotePaging | None = None
    qmp: QMPClient | None = None
    directory_at: float | None = None
    directory_s: float | None = None
    remote_pages: int = 0
    committed: bool = False


@dataclass
class Source:
    """The old main host's side, from the freeze to committed or rolled back."""

    vm: uuid.UUID
    path: str
    ram: RamFile
    dest: SubHost
    domain: str
    export: Export
    op: Operation
    #: the source QEMU's extra monitor (x-ignore-shared, its STOP and RESUME events)
    qmp: QMPClient | None = None
    stop_watch: threading.Event = field(default_factory=threading.Event)
    #: what :meth:`MainMoves.prepare_source` answered (a repeated call gets it again)
    reply: dict[str, Any] = field(default_factory=dict)


class MainMoves:
    """The agent's main-host moves: hooks, the two ends, their operations."""

    def __init__(self, host_name: str, endpoint: Endpoint, memfs: Any, operations: Operations,
                 key: auth.SharedKey, config: LibvirtConfig, *,
                 placement_policy: str = "round_robin", tls: auth.TlsConfig | None = None,
                 fetch_timeout: float = 30.0, streams: int = 1,
                 on_backend: Callable[[str, FabricRemotePaging], None] = lambda p, b: None,
                 held_here: Callable[[uuid.UUID], int] = lambda vm: 0) -> None:
        self.host_name = host_name
        self.endpoint = endpoint
        self.memfs = memfs
        self.operations = operations
        self.config = config
        self._key = key
        self._tls = tls
        self._placement = placement_policy
        self._fetch_timeout = fetch_timeout
        self._streams = streams
        self._on_backend = on_backend
        self._held_here = held_here
        self.domains: dict[uuid.UUID, Domain] = {}
        self.exports: dict[uuid.UUID, Export] = {}
        self.incoming: dict[uuid.UUID, Incoming] = {}
        #: sources prepared for a libvirt migration this agent does not run (Nova's)
        self.sources: dict[uuid.UUID, Source] = {}
        self._source_locks: dict[uuid.UUID, threading.Lock] = {}
        self._lock = threading.Lock()

    # -- the libvirt hook (this host's domains) ---------------------------------------

    def domain_start(self, req: dict[str, Any]) -> dict[str, Any]:
        """Hook ``start begin``: a domain's QEMU is about to open its RAM file."""
        vm = _uuid_arg(req, "vm")
        name = _str(req, "name")
        did = req.get("id")
        if did is None:
            did = self._newest_domain_dir(name)
        if not isinstance(did, int) or isinstance(did, bool) or did < 1:
            raise ControlError("'id' must be the domain id (a positive integer)")
        qmp = req.get("qmp")
        path = ram_file_path(did, name)
        with self._lock:
            self.domains[vm] = Domain(vm, name, path, str(qmp) if qmp else None)
            inc = self.incoming.get(vm)
        if inc is None:
            return {"ok": True, "incoming": False, "path": path}
        if inc.ram is not None:
            raise ControlError(f"{vm} already has an incoming RAM file at {inc.path}",
                               errno.EEXIST)
        ram = self.memfs.create_ram_file(path, inc.size, inc.resident_limit)
        try:
            backend = FabricRemotePaging(
                self.host_name, [inc.source], self._key, placement.load(self._placement),
                tls=self._tls, fetch_timeout=self._fetch_timeout, streams=self._streams)
            ram.quiet = True
            ram.set_remote(vm, backend)
            ram.incoming = DirectoryGate(lambda: self._fetch_directory(inc),
                                         timeout=self.config.directory_timeout + 10)
        except Exception:
            self.memfs.remove_ram_file(path)
            raise
        inc.path, inc.ram, inc.backend = path, ram, backend
        self._on_backend(path, backend)
        LOG.info("main-host move of %s from %s: RAM file %s ready", vm, inc.source.name, path)
        return {"ok": True, "incoming": True, "path": path}

    def _newest_domain_dir(self, name: str) -> int | None:
        """The id of the newest memory directory libvirt made for ``name`` (an XML
        without the id)."""
        suffix = f"-{name[:SHORT_NAME]}"
        ids = [int(d[:-len(suffix)]) for d in self.memfs.list_dir("libvirt/qemu")
               if d.endswith(suffix) and d[:-len(suffix)].isdigit()]
        return max(ids, default=None)

    def domain_started(self, req: dict[str, Any]) -> dict[str, Any]:
        """Hook ``started begin`` (synchronous, after libvirt's migrate-incoming and
        before the source sends): x-ignore-shared on the incoming QEMU."""
        vm = _uuid_arg(req, "vm")
        with self._lock:
            inc = self.incoming.get(vm)
            dom = self.domains.get(vm)
        if inc is None or inc.ram is None:
            return {"ok": True, "incoming": False}
        if dom is None or not dom.qmp:
            raise ControlError(f"domain {vm} has no extra QMP monitor: x-ignore-shared "
                               f"cannot be set", errno.EOPNOTSUPP)
        qmp = QMPClient(Path(dom.qmp), timeout=10).connect(timeout=10)
        try:
            qmp.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED})
        except BaseException:
            qmp.close()
            raise
        inc.qmp = qmp   # kept: it sees the RESUME of the switchover
        return {"ok": True, "incoming": True, "ignore_shared": True}

    def domain_stopped(self, req: dict[str, Any]) -> dict[str, Any]:
        vm = _uuid_arg(req, "vm")
        with self._lock:
            self.domains.pop(vm, None)
        return {"ok": True}

    # -- the new main host --------------------------------------------------------------

    def prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        """Expect VM ``vm`` (``size`` bytes of RAM) from main host ``source``."""
        vm = _uuid_arg(req, "vm")
        size = req.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 \
                or size % PAGE_SIZE:
            raise ControlError(f"'size' must be a positive multiple of {PAGE_SIZE} (bytes)")
        limit = req.get("resident_limit", 0)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise ControlError("'resident_limit' must be a non-negative integer (bytes)")
        source = parse_host(req.get("source"), "source")
        if source.name == self.host_name:
            raise ControlError("the source of a main-host move cannot be its destination")
        if any(ram.vm == vm for _p, ram in self.memfs.ram_files()):
            raise ControlError(f"{vm} already has a RAM file on {self.host_name}",
                               errno.EEXIST)
        held = self._held_here(vm)
        if held:
            raise ControlError(f"{self.host_name} holds {held} pages of {vm} as a sub-host: "
                               f"move that part away first", errno.EBUSY)
        with self._lock:
            old = self.incoming.get(vm)
            if old is not None and old.ram is not None:
                raise ControlError(f"a main-host move of {vm} to {self.host_name} is "
                                   f"already under way", errno.EBUSY)
            self.incoming[vm] = Incoming(vm, size, limit, source)
        return {"ok": True, "host": self.host_name}

    def _fetch_directory(self, inc: Incoming) -> None:
        """In the first READ of the incoming RAM file: take the old host's directory."""
        ram, backend = inc.ram, inc.backend
        assert ram is not None and backend is not None and ram.table is not None
        t0 = time.monotonic()
        head, codes = backend.client(1).get_directory(
            inc.vm, timeout=self.config.directory_timeout + 5)
        meta = json.loads(head)
        if meta.get("npages") != ram.table.npages or len(codes) != ram.table.npages:
            raise ValueError(f"the directory has {meta.get('npages')} pages, the RAM file "
                             f"{ram.table.npages}")
        holder_map = bytearray(256)
        holder_map[HERE] = 1
        for code, sub in meta.get("holders", {}).items():
            host = SubHost(str(sub["name"]), str(sub["address"]), int(sub["port"]))
            if host.name == self.host_name:
                raise ValueError(f"{self.host_name} is a holder of {inc.vm}")
            holder_map[int(code)] = backend.add_sub_host(host)
        inc.remote_pages = ram.table.install_directory(codes, bytes(holder_map))
        inc.directory_at = time.time()
        inc.directory_s = time.monotonic() - t0
        LOG.info("main-host move of %s: directory installed, %d remote pages, in %.1f ms",
                 inc.vm, inc.remote_pages, inc.directory_s * 1e3)

    def commit(self, req: dict[str, Any]) -> dict[str, Any]:
        """libvirt reported success: the VM runs here. Page out again and pull the old
        main host's part (``then``: ``pull``, ``reintegrate`` or ``none``)."""
        vm = _uuid_arg(req, "vm")
        then = req.get("then", "pull")
        if then not in ("pull", "reintegrate", "none"):
            raise ControlError("'then' must be 'pull', 'reintegrate' or 'none'")
        with self._lock:
            inc = self.incoming.get(vm)
        if inc is None or inc.ram is None or inc.path is None:
            raise ControlError(f"no main-host move of {vm} to {self.host_name}", errno.ENOENT)
        ram = inc.ram
        gate = ram.incoming
        if gate is not None:
            try:
                gate.wait()   # no READ happened yet: the directory is taken now
            except OSError as exc:
                raise ControlError(f"the page directory of {vm} is not here: {exc}",
                                   errno.EIO) from exc
        resumed = _resume_time(inc.qmp)
        if inc.qmp is not None:
            inc.qmp.close()
            inc.qmp = None
        ram.incoming = None
        ram.quiet = False
        inc.committed = True
        with self._lock:
            self.incoming.pop(vm, None)
        result: dict[str, Any] = {"ok": True, "path": inc.path, "resumed_at": resumed,
                                  "directory_at": inc.directory_at,
                                  "directory_ms": round((inc.directory_s or 0) * 1e3, 2),
                                  "remote_pages": inc.remote_pages}
        try:
            if then == "pull":
                op = self.operations.partial_migration(inc.path, ram, inc.source.name,
                                                       self.endpoint,
                                                       request_id=req.get("request_id"))
            elif then == "reintegrate":
                op = self.operations.reintegration(inc.path, ram,
                                                   request_id=req.get("request_id"))
            else:
                return result
        except OperationError as exc:
            raise ControlError(f"committed, but the pull did not start: {exc}",
                               exc.errno) from exc
        result["op"] = op.progress()
        return result

    def abort_incoming(self, req: dict[str, Any]) -> dict[str, Any]:
        """The migration failed: forget the incoming VM (its QEMU must be gone)."""
        vm = _uuid_arg(req, "vm")
        with self._lock:
            inc = self.incoming.get(vm)
            if inc is None:
                return {"ok": True, "removed": False}
            if inc.committed:
                raise ControlError(f"the move of {vm} is committed", errno.EBUSY)
            if inc.ram is not None and inc.ram.user_opens:
                raise ControlError(f"the incoming QEMU of {vm} still has its RAM file open",
                                   errno.EBUSY)
            self.incoming.pop(vm)
        if inc.qmp is not None:
            inc.qmp.close()
        if inc.path is not None:
            self.memfs.remove_ram_file(inc.path)
        if inc.backend is not None:
            inc.backend.close()
        return {"ok": True, "removed": inc.path is not None}

    # -- the old main host --------------------------------------------------------------

    def export_of(self, vm: uuid.UUID) -> Export | None:
        return self.exports.get(vm)

    def directory(self, vm: uuid.UUID) -> tuple[bytes, bytes]:
        """The fabric's GET_DIRECTORY."""
        export = self.exports.get(vm)
        if export is None:
            raise RemoteBadRequestError(f"no main-host move of VM {vm} from {self.host_name}")
        return export.directory(self.config.directory_timeout)

    def end_export(self, vm: uuid.UUID) -> bool:
        """The new main host took every page (its DROP_VM): the old RAM file goes."""
        with self._lock:
            export = self.exports.get(vm)
            if export is None or not export.committed:
                return False
            del self.exports[vm]
        export.close()
        try:
            self.memfs.remove_ram_file(export.path)
        except Exception:  # noqa: BLE001 - logged; the pages are safe at the new host
            LOG.exception("removing %s after its main-host move", export.path)
        LOG.info("main-host move of %s: the old RAM file %s is released", vm, export.path)
        return True

    def migrate(self, req: dict[str, Any]) -> Operation:
        """Start the main-host move of the VM whose RAM file is ``path`` to ``dest``."""
        again = self.operations.by_request(req.get("request_id"))
        if again is not None:   # a repeated request (the engine restarted): the same one
            return again
        path = _str_arg(req, "path")
        ram = self.memfs.find(path)
        vm, dest = self._check_source(path, ram, req.get("dest"))
        qmp, domain = self._monitor_of(vm, req)
        op = self.operations.new_operation("main_host_migration", ram, path, self.host_name,
                                           dest.name, req.get("request_id"))
        op.details.update(phase="starting", domain=domain)
        thread = threading.Thread(target=self._run_migrate,
                                  args=(op, ram, vm, path, dest, domain, qmp),
                                  name=f"main-move-{op.id}", daemon=True)
        thread.start()
        return op

    def _check_source(self, path: str, ram: RamFile, raw_dest: Any,
                      ) -> tuple[uuid.UUID, SubHost]:
        """The VM of ``ram`` and the destination, if this host can move it there."""
        vm = ram.vm
        if vm is None or not isinstance(ram.remote, FabricRemotePaging) or ram.table is None:
            raise OperationError(f"{path} is not a split VM's RAM file on {self.host_name}")
        dest = parse_host(raw_dest, "dest")
        if dest.name == self.host_name:
            raise OperationError("the destination must differ from the main host")
        if ram.remote.holder_of_host(dest.name):
            raise OperationError(f"{dest.name} holds a part of {vm}: move it away first, "
                                 f"or choose another host", errno.EBUSY)
        return vm, dest

    def _monitor_of(self, vm: uuid.UUID, req: dict[str, Any]) -> tuple[str, str]:
        """The extra QMP monitor and the libvirt name of ``vm``'s domain (the hook's,
        unless the request names them)."""
        with self._lock:
            dom = self.domains.get(vm)
        qmp = req.get("qmp") or (dom.qmp if dom else None)
        domain = str(req.get("domain") or (dom.name if dom else vm))
        if not qmp:
            raise OperationError(f"no QMP monitor known for {vm}: was it started with the "
                                 f"libvirt hook installed?", errno.EOPNOTSUPP)
        return str(qmp), domain

    def _start_source(self, src: Source, qmp_path: str) -> None:
        """Freeze the RAM file, set x-ignore-shared on the source QEMU, export the
        directory and follow STOP/RESUME. A failure leaves the rest to
        :meth:`_end_source` (not ok)."""
        src.ram.frozen = True
        src.qmp = QMPClient(Path(qmp_path), timeout=10).connect(timeout=10)
        src.qmp.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED})
        with self._lock:
            self.exports[src.vm] = src.export
        watcher = threading.Thread(target=_watch_stop,
                                   args=(src.qmp, src.export, src.stop_watch),
                                   daemon=True, name=f"main-move-qmp-{src.op.id}")
        watcher.start()

    def _end_source(self, src: Source, ok: bool) -> None:
        """The libvirt step ended: stop watching; not ``ok``, the VM goes on here (its
        export goes, the RAM file thaws and gets its resident limit back)."""
        src.stop_watch.set()
        if src.qmp is not None:
            src.qmp.close()
        if not ok:
            with self._lock:
                if self.exports.get(src.vm) is src.export:
                    del self.exports[src.vm]
            src.export.close(rolled_back=True)
            src.ram.frozen = False

    def _new_source(self, op: Operation, ram: RamFile, vm: uuid.UUID, path: str,
                    dest: SubHost, domain: str) -> Source:
        return Source(vm, path, ram, dest, domain,
                      Export(vm, path, ram, Path(self.memfs.config.mountpoint)), op)

    def _run_migrate(self, op: Operation, ram: RamFile, vm: uuid.UUID, path: str,
                     dest: SubHost, domain: str, qmp_path: str) -> None:
        src = self._new_source(op, ram, vm, path, dest, domain)
        ok = False
        try:
            self._start_source(src, qmp_path)
            op.details["phase"] = "migrating"
            t0 = time.monotonic()
            fmt = {"address": dest.address, "host": dest.name}
            argv = [self.config.virsh, "-q", "-c", self.config.connection_uri, "migrate",
                    "--live", "--p2p", domain, self.config.peer_uri.format(**fmt),
                    self.config.migrate_uri.format(**fmt)]
            LOG.info("main-host move of %s to %s: %s", vm, dest.name, " ".join(argv))
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + self.config.migration_timeout
            aborted = False
            while proc.poll() is None:
                if (op.abort_requested or time.monotonic() > deadline) and not aborted:
                    aborted = True
                    subprocess.run([self.config.virsh, "-q", "-c", self.config.connection_uri,
                                    "domjobabort", domain], capture_output=True, timeout=30,
                                   check=False)
                time.sleep(0.02)
            _out, err = proc.communicate()
            op.details["libvirt_s"] = round(time.monotonic() - t0, 3)
            if proc.returncode != 0:
                raise RuntimeError(f"libvirt migration failed: {err.strip() or proc.returncode}")
            src.export.committed = True
            ok = True
            op.details.update(phase="switched", stopped_at=src.export.stopped_at,
                              directory_at=src.export.directory_at)
            op.finish(OpState.DONE)
            LOG.info("main-host move of %s to %s: libvirt done in %.2fs", vm, dest.name,
                     op.details["libvirt_s"])
        except Exception as exc:  # the VM goes on here: the directory never changed
            LOG.warning("main-host move of %s to %s failed: %s", vm, dest.name, exc)
            op.details["phase"] = "rolled back"
            op.finish(OpState.ABORTED if op.abort_requested else OpState.FAILED, str(exc))
        finally:
            self._end_source(src, ok)
            self.operations.release(op)

    # -- the old main host, when Nova's libvirt driver runs the migration ---------------

    def _source_lock(self, vm: uuid.UUID) -> threading.Lock:
        with self._lock:
            return self._source_locks.setdefault(vm, threading.Lock())

    def prepare_source(self, req: dict[str, Any]) -> dict[str, Any]:
        """Prepare this host's side of a main-host move that someone else's libvirt
        migration runs (Nova's driver): no ``virsh`` here.

        The VM is ``vm`` (its RAM file found through the domain the hook reported)
        or its RAM file ``path``; ``dest`` is the new main host ``{name, address,
        port}``. The checks of :meth:`migrate`, then what it does before ``virsh``:
        the RAM file is frozen, x-ignore-shared is set through the domain's extra
        QMP monitor, the directory is exported (handed over once QEMU is paused for
        the switchover) and the monitor's STOP and RESUME are followed. A
        ``main_host_migration`` operation (phase ``prepared``) holds the RAM file
        until :meth:`finish_source`; its ``op_abort`` changes nothing (the one
        running the migration aborts it, then calls ``finish_source`` with
        ``ok=False``). Returns ``{ok, vm, path, domain}``; the same answer again for
        the same VM and destination, EBUSY for another destination.
        """
        vm, path, ram = self._source_ram(req)
        dest = parse_host(req.get("dest"), "dest")
        with self._source_lock(vm):
            with self._lock:
                prepared = self.sources.get(vm)
                export = self.exports.get(vm)
            if prepared is not None:
                if prepared.dest.name != dest.name:
                    raise OperationError(f"the main-host move of {vm} to {prepared.dest.name}"
                                         f" is prepared: not one to {dest.name}", errno.EBUSY)
                return dict(prepared.reply)
            vm, dest = self._check_source(path, ram, req.get("dest"))
            if export is not None:
                state = "done (its pages are being pulled)" if export.committed \
                    else "under way"
                raise OperationError(f"a main-host move of {vm} from {self.host_name} is "
                                     f"{state}", errno.EBUSY)
            qmp, domain = self._monitor_of(vm, req)
            op = self.operations.new_operation("main_host_migration", ram, path,
                                               self.host_name, dest.name)
            op.details.update(phase="starting", domain=domain)
            src = self._new_source(op, ram, vm, path, dest, domain)
            try:
                self._start_source(src, qmp)
            except BaseException as exc:   # the VM goes on here, as before
                self._end_source(src, False)
                op.details["phase"] = "rolled back"
                op.finish(OpState.FAILED, str(exc) or type(exc).__name__)
                self.operations.release(op)
                if isinstance(exc, (QMPError, OSError)):
                    raise OperationError(f"cannot set x-ignore-shared on the QEMU of {vm}: "
                                         f"{exc}", errno.EIO) from exc
                raise
            op.details["phase"] = "prepared"
            src.reply = {"ok": True, "vm": str(vm), "path": path, "domain": domain}
            with self._lock:
                self.sources[vm] = src
        LOG.info("main-host move of %s to %s: source prepared (%s frozen, x-ignore-shared)",
                 vm, dest.name, path)
        return dict(src.reply)

    def _source_ram(self, req: dict[str, Any]) -> tuple[uuid.UUID, str, RamFile]:
        """The VM, RAM file path and RAM file a source request names (``vm``,
        ``path`` or both)."""
        vm = _uuid_arg(req, "vm") if req.get("vm") is not None else None
        if req.get("path") is not None:
            path = _str_arg(req, "path")
        elif vm is None:
            raise ControlError("'vm' or 'path' must be given")
        else:
            with self._lock:
                dom = self.domains.get(vm)
            if dom is None:
                raise OperationError(f"no domain of {vm} known on {self.host_name}: was it "
                                     f"started with the libvirt hook installed?",
                                     errno.ENOENT)
            path = dom.path
        ram = self.memfs.find(path)
        if vm is not None and ram.vm is not None and ram.vm != vm:
            raise OperationError(f"{path} is the RAM file of {ram.vm}, not of {vm}")
        vm = vm or ram.vm
        if vm is None:
            raise OperationError(f"{path} is not a split VM's RAM file on {self.host_name}")
        return vm, path, ram

    def finish_source(self, req: dict[str, Any]) -> dict[str, Any]:
        """The libvirt migration prepared by :meth:`prepare_source` ended (``ok``).

        ``ok`` true: the source never runs again; the export is committed (M's
        resident pages wait for the new main host's pull, whose DROP_VM ends it).
        Refused (EBUSY) if the source QEMU never paused for a switchover or resumed
        since: then nothing changed, and ``ok`` false rolls back. ``ok`` false: what
        a failed ``virsh migrate`` leaves: the export goes, the RAM file thaws and
        gets its resident limit back. Refused (EBUSY) once the destination took the
        directory and the source QEMU is gone: then the move happened. Repeated
        calls: ``ok`` true again gets ``committed`` again while the export lasts;
        ``ok`` false with nothing prepared answers ``rolled_back: false``.
        """
        vm = _uuid_arg(req, "vm")
        ok = req.get("ok")
        if not isinstance(ok, bool):
            raise ControlError("'ok' must be true or false")
        with self._source_lock(vm):
            with self._lock:
                src = self.sources.get(vm)
                export = self.exports.get(vm)
            if src is None:
                if export is not None and export.committed:
                    if ok:
                        return {"ok": True, "vm": str(vm), "path": export.path,
                                "committed": True, "stopped_at": export.stopped_at,
                                "directory_at": export.directory_at}
                    raise OperationError(f"the main-host move of {vm} is committed: it "
                                         f"cannot be rolled back", errno.EBUSY)
                if export is not None:
                    raise OperationError(f"the main-host move of {vm} from "
                                         f"{self.host_name} runs its own libvirt migration",
                                         errno.EBUSY)
                if ok:
                    raise OperationError(f"no main-host move of {vm} is prepared on "
                                         f"{self.host_name}", errno.ENOENT)
                return {"ok": True, "vm": str(vm), "rolled_back": False}
            reply = self._commit_source(src) if ok else self._roll_back_source(src)
            with self._lock:
                self.sources.pop(vm, None)
        return reply

    def _commit_source(self, src: Source) -> dict[str, Any]:
        export, op = src.export, src.op
        assert src.qmp is not None
        stops, paused = _last_pause(src.qmp)
        if paused is None:
            why = "never paused for a switchover" if not stops else \
                "was resumed after its switchover pause"
            raise OperationError(f"the source QEMU of {src.vm} {why}: the move did not "
                                 f"happen (finish it with ok=false)", errno.EBUSY)
        if export.stopped_at is None:   # the watcher has not seen it yet
            export.stopped_at = paused.timestamp
        export.stopped.set()
        export.committed = True
        op.details.update(phase="switched", stopped_at=export.stopped_at,
                          directory_at=export.directory_at)
        op.finish(OpState.DONE)
        self._end_source(src, True)
        self.operations.release(op)
        LOG.info("main-host move of %s to %s: committed (libvirt done)", src.vm,
                 src.dest.name)
        return {"ok": True, "vm": str(src.vm), "path": src.path, "committed": True,
                "stopped_at": export.stopped_at, "directory_at": export.directory_at}

    def _roll_back_source(self, src: Source) -> dict[str, Any]:
        export, op = src.export, src.op
        assert src.qmp is not None
        if export.directory_at is not None and not src.qmp.connected:
            raise OperationError(f"the main-host move of {src.vm} to {src.dest.name} "
                                 f"happened: {src.dest.name} took the page directory and "
                                 f"the source QEMU is gone (finish it with ok=true)",
                                 errno.EBUSY)
        LOG.warning("main-host move of %s to %s failed: rolled back", src.vm, src.dest.name)
        op.details["phase"] = "rolled back"
        op.finish(OpState.ABORTED if op.abort_requested else OpState.FAILED,
                  "the libvirt migration failed")
        self._end_source(src, False)
        self.operations.release(op)
        return {"ok": True, "vm": str(src.vm), "path": src.path, "rolled_back": True}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"exports": {str(v): {"path": e.path, "committed": e.committed,
                                         "held": e.held, "served": e.served}
                                for v, e in self.exports.items()},
                    "incoming": {str(v): {"path": i.path, "source": i.source.name,
                                          "directory": i.directory_at is not None}
                                 for v, i in self.incoming.items()},
                    "sources": {str(v): {"path": s.path, "dest": s.dest.name,
                                         "stopped": s.export.stopped.is_set()}
                                for v, s in self.sources.items()},
                    "domains": {str(v): d.name for v, d in self.domains.items()}}


def _watch_stop(qmp: QMPClient, export: Export, done: threading.Event) -> None:
    """Follow the source's STOP and RESUME events (a resumed source is not stopped)."""
    seen = 0
    while not done.is_set():
        events = qmp.events_since(seen)
        seen += len(events)
        for ev in events:
            if ev.name == "STOP":
                export.stopped_at = ev.timestamp
                export.stopped.set()
            elif ev.name == "RESUME":
                export.stopped.clear()
        if not qmp.connected and not export.stopped.is_set():
            return
        done.wait(0.002)


def _last_pause(qmp: QMPClient) -> tuple[int, QMPEvent | None]:
    """How many times the source paused (QMP ``STOP``), and its last pause if no
    ``RESUME`` came after it (None: it runs, or never paused)."""
    stops, last = 0, None
    for ev in qmp.events_since(0):
        if ev.name == "STOP":
            stops, last = stops + 1, ev
        elif ev.name == "RESUME":
            last = None
    return stops, last


def _resume_time(qmp: QMPClient | None) -> float | None:
    if qmp is None:
        return None
    resumed = qmp.events_named("RESUME")
    return resumed[-1].timestamp if resumed else None


def _str(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError(f"'{key}' must be a non-empty string")
    return value


def _uuid_arg(req: dict[str, Any], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(req.get(key)))
    except ValueError as exc:
        raise ControlError(f"'{key}' must be an instance UUID") from exc


def parse_host(raw: Any, what: str) -> SubHost:
    """A request's ``{name, address, port}`` (a destination, a source), checked."""
    if not isinstance(raw, dict):
        raise ControlError(f"'{what}' must be {{name, address, port}}")
    try:
        host = SubHost(str(raw["name"]), str(raw["address"]), int(raw["port"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ControlError(f"bad '{what}': {exc}") from exc
    if not host.name or not host.address or not 0 < host.port < 65536:
        raise ControlError(f"'{what}' needs a name, an address and a port 1-65535")
    return host

