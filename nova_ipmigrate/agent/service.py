"""The agent: one long-lived daemon per compute host.

Owns this host's memfs (the RAM of the VMs whose main host this is), its
sub-host page store (pages held for VMs whose main host is elsewhere), the
fabric endpoint serving that store to authenticated peers, and the remote
paging backends of its split VMs. Managed through the control socket (the
engine's RPC comes later): ``create``/``set_limit``/``stats``/``shutdown`` of
memfs, plus ``set_remote`` (a RAM file's VM UUID and sub-hosts) and
``agent_stats``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova_ipmigrate.agent import placement
from nova_ipmigrate.agent.mainmove import LibvirtConfig, MainMoves, parse_host
from nova_ipmigrate.agent.pageservice import AgentPageService
from nova_ipmigrate.agent.remote import FabricRemotePaging, SubHost
from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.errors import FabricError
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.memfs.control import ControlError, ControlServer, _str_arg
from nova_ipmigrate.memfs.server import MemFS, MemfsConfig
from nova_ipmigrate.migration.operations import Operation, OperationError, Operations
from nova_ipmigrate.migration.transfer import Endpoint, LocalStaging

LOG = logging.getLogger(__name__)
PAGE = 4096


@dataclass
class AgentConfig:
    host_name: str
    memfs: MemfsConfig
    control_socket: Path
    key: auth.SharedKey
    fabric_address: str = "0.0.0.0"
    fabric_port: int = 47800
    tls: auth.TlsConfig | None = None
    substore_mb: int = 4096
    placement_policy: str = "round_robin"
    fetch_timeout: float = 30.0
    streams: int = 1
    #: where other hosts reach this host's fabric (default: fabric_address)
    advertise_address: str | None = None
    #: seconds one region copy of a part move may take
    copy_timeout: float = 120.0
    #: region copies of one part move in flight at once
    regions_in_flight: int = 2
    #: transfer strategy of a request that names none (a transfer_strategy plugin)
    default_strategy: str = "ipmigrate"
    #: main-host moves through libvirt
    libvirt: LibvirtConfig = dataclasses.field(default_factory=LibvirtConfig)


class Agent:
    def __init__(self, config: AgentConfig, on_shutdown: Any = None) -> None:
        self.config = config
        self.memfs = MemFS(config.memfs)
        self.substore = SubHostStore(config.substore_mb * 2**20 // PAGE)
        self.pages = AgentPageService(self.substore, config.host_name, config.key,
                                      tls=config.tls, streams=config.streams)
        self.fabric = FabricServer(config.fabric_address, config.fabric_port, config.host_name,
                                   config.key, self.pages, tls=config.tls)
        self.control = ControlServer(self.memfs, config.control_socket,
                                     on_shutdown or (lambda: None),
                                     extra={"set_remote": self._set_remote,
                                            "split": self._split,
                                            "page_map": self._page_map,
                                            "agent_stats": self._agent_stats,
                                            "parts": self._parts,
                                            "partial_migrate": self._partial_migrate,
                                            "reintegrate": self._reintegrate,
                                            "op_status": self._op_status,
                                            "ops": self._ops_list,
                                            "op_abort": self._op_abort,
                                            "main_migrate": self._main_migrate,
                                            "main_prepare_source": self._main_prepare_source,
                                            "main_finish_source": self._main_finish_source,
                                            "incoming_prepare": self._incoming_prepare,
                                            "incoming_commit": self._incoming_commit,
                                            "incoming_abort": self._incoming_abort,
                                            "main_moves": self._main_moves,
                                            "domain_start": self._domain_start,
                                            "domain_started": self._domain_started,
                                            "domain_stopped": self._domain_stopped})
        self._remotes: dict[str, FabricRemotePaging] = {}
        self.operations = Operations(
            config.host_name, Endpoint(config.host_name, self.advertise_address,
                                       config.fabric_port),
            LocalStaging(self._take_staged, self.substore.drop_pages, self.substore.drop_vm),
            copy_timeout=config.copy_timeout, regions_in_flight=config.regions_in_flight,
            default_strategy=config.default_strategy)
        self.main_moves = MainMoves(
            config.host_name, Endpoint(config.host_name, self.advertise_address,
                                       config.fabric_port),
            self.memfs, self.operations, config.key, config.libvirt,
            placement_policy=config.placement_policy, tls=config.tls,
            fetch_timeout=config.fetch_timeout, streams=config.streams,
            on_backend=self._remotes.__setitem__,
            held_here=self.substore.held_of)
        self.pages.export_of = self.main_moves.export_of
        self.pages.directory_of = self.main_moves.directory
        self.pages.export_ended = self._export_ended

    def _export_ended(self, vm: uuid.UUID) -> bool:
        export = self.main_moves.export_of(vm)
        if export is None or not self.main_moves.end_export(vm):
            return False
        backend = self._remotes.pop(export.path, None)
        if backend is not None:
            backend.close()
        return True

    @property
    def advertise_address(self) -> str:
        addr = self.config.advertise_address or self.config.fabric_address
        if addr in ("0.0.0.0", "::", ""):
            addr = socket.gethostbyname(socket.gethostname())
        return addr

    def _take_staged(self, key: uuid.UUID, pages: Sequence[int]) -> dict[int, bytes]:
        got, data = self.substore.held_pages(key, list(pages))
        self.substore.drop_pages(key, got)
        return dict(zip(got, data, strict=True))

    def start(self) -> None:
        try:
            self.fabric.start()
            self.memfs.start()
            self.control.start()
        except BaseException:
            self.stop()
            raise
        LOG.info("agent %s up: fabric on %s:%d", self.config.host_name,
                 self.config.fabric_address, self.fabric.port)

    def stop(self) -> None:
        self.control.stop()
        self.memfs.stop()
        self.fabric.stop()
        self.pages.close()
        for r in self._remotes.values():
            r.close()

    # -- control operations ------------------------------------------------------

    def _set_remote(self, req: dict[str, Any]) -> dict[str, Any]:
        path = _str_arg(req, "path")
        try:
            vm = uuid.UUID(str(req.get("vm")))
        except ValueError as exc:
            raise ControlError("'vm' must be an instance UUID") from exc
        raw = req.get("sub_hosts")
        if not isinstance(raw, list) or not raw:
            raise ControlError("'sub_hosts' must be a non-empty list of "
                               "{name, address, port}")
        try:
            subs = [SubHost(str(s["name"]), str(s["address"]), int(s["port"])) for s in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(f"bad sub-host entry: {exc}") from exc
        ram = self.memfs.find(path)
        if ram.remote is not None:
            raise ControlError(f"{path} already pages to sub-hosts", errno.EBUSY)
        try:
            backend = FabricRemotePaging(
                self.config.host_name, subs, self.config.key,
                placement.load(self.config.placement_policy), tls=self.config.tls,
                fetch_timeout=self.config.fetch_timeout, streams=self.config.streams)
        except ValueError as exc:
            raise ControlError(str(exc)) from exc
        ram.set_remote(vm, backend)
        self._remotes[path] = backend
        return {"ok": True}

    def _split(self, req: dict[str, Any]) -> dict[str, Any]:
        """Split migration: a running VM's RAM file gets sub-hosts and a resident limit.

        Cold pages leave at once, evicted least recently paged-in first and sent
        straight to the sub-host the placement policy picks (through a bounded
        batch buffer, never gathered anywhere else); the VM keeps running and
        pages it touches meanwhile simply stay or come back. Progress: ``stats``.
        """
        limit = req.get("resident_limit")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < PAGE:
            raise ControlError("'resident_limit' must be an integer >= 4096 (bytes)")
        path = _str_arg(req, "path")
        ram = self.memfs.find(path)
        stored = 0
        if ram.remote is None:
            self._set_remote(req)
        else:
            stored = self._resplit(path, ram, req)
        resident = ram.table.resident if ram.table is not None else 0
        self.memfs.set_resident_limit(path, limit)
        return {"ok": True, "pages_to_move": max(0, resident - limit // PAGE) + stored}

    def _resplit(self, path: str, ram: Any, req: dict[str, Any]) -> int:
        """Split a VM again that was reintegrated (or lost its sub-hosts): the given
        sub-hosts become its holders, and its pages in the local store leave for them."""
        backend, table = ram.remote, ram.table
        if not isinstance(backend, FabricRemotePaging) or table is None:
            raise ControlError(f"{path} cannot be split again", errno.EBUSY)
        if any(op["path"] == path and op["state"] == "running"
               for op in self.operations.all()):
            raise ControlError(f"{path} is busy with an operation", errno.EBUSY)
        raw = req.get("sub_hosts")
        if not isinstance(raw, list) or not raw:
            raise ControlError("'sub_hosts' must be a non-empty list of {name, address, port}")
        try:
            subs = [SubHost(str(s["name"]), str(s["address"]), int(s["port"])) for s in raw]
            holders = [backend.add_sub_host(s) for s in subs]
        except (KeyError, TypeError, ValueError) as exc:
            raise ControlError(f"bad sub-host entry: {exc}") from exc
        with table.lock:
            table.closed_holders.difference_update(holders)
            table.push_enabled = True
        return table.queue_push_all()

    def _page_map(self, req: dict[str, Any]) -> dict[str, Any]:
        ram = self.memfs.find(_str_arg(req, "path"))
        if ram.table is None:
            raise ControlError("the RAM file has no size yet")
        pmap = ram.table.page_map()
        remote = ram.remote
        active = remote.active_holders() if isinstance(remote, FabricRemotePaging) else {}
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"
        # Holders of the VM now, and former ones only while they still hold pages.
        holders = {str(i + 1): s.name for i, s in
                   enumerate(getattr(remote, "sub_hosts", []))
                   if i + 1 in active or digits[min(i + 1, 35)] in pmap}
        return {"ok": True, "host": self.config.host_name, "map": pmap,
                "holders": holders, "stats": ram.stats()}

    def _agent_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        fab = self.fabric.stats()
        return {"ok": True, "host": self.config.host_name, "substore": self.substore.stats(),
                "fabric": dataclasses.asdict(fab),
                "memfs": self.memfs.stats()}

    # -- part moves ----------------------------------------------------------------------

    def _parts(self, req: dict[str, Any]) -> dict[str, Any]:
        """Every split VM this host is the main host of, with the pages on each host."""
        vms = []
        for path, ram in self.memfs.ram_files():
            remote = ram.remote
            if ram.table is None or not isinstance(remote, FabricRemotePaging) or ram.vm is None:
                continue
            export = self.main_moves.export_of(ram.vm)
            if ram.quiet or (export is not None and export.committed):
                continue  # moving here, not committed yet; or moved away
            names = remote.active_holders()
            counts = ram.table.holders()
            by_host = {self.config.host_name: counts.get(0, 0)}
            for h, n in counts.items():
                if h:
                    name = remote.holder_name(h)
                    by_host[name] = by_host.get(name, 0) + n
            vms.append({"path": path, "vm": str(ram.vm), "main_host": self.config.host_name,
                        "holders": sorted(names.values()), "pages_by_host": by_host,
                        "broken": bool(ram.lost_pages)})
        return {"ok": True, "host": self.config.host_name, "vms": vms}

    def _ram_for_op(self, req: dict[str, Any]) -> tuple[str, Any]:
        path = _str_arg(req, "path")
        ram = self.memfs.find(path)
        return path, ram

    def _partial_migrate(self, req: dict[str, Any]) -> dict[str, Any]:
        """Move the part one sub-host holds of a VM to another host (``dest``).

        ``dest`` is ``{name, address, port}``: a new host, one that already
        holds a part of the VM, or this (the main) host. Returns the operation.
        """
        path, ram = self._ram_for_op(req)
        source = _str_arg(req, "source")
        dest = _endpoint(req.get("dest"))
        cap = req.get("max_rate_mb_s")
        if cap is not None and (not isinstance(cap, (int, float)) or isinstance(cap, bool)
                                or cap <= 0):
            raise ControlError("'max_rate_mb_s' must be a positive number (MiB/s)")
        return _started(f"the move to {dest.name}", lambda: self.operations.partial_migration(
            path, ram, source, dest, _strategy_arg(req),
            max_rate=cap * 2**20 if cap else None, request_id=_request_id(req)))

    def _reintegrate(self, req: dict[str, Any]) -> dict[str, Any]:
        """Every holder sends its part of the VM here, in parallel."""
        path, ram = self._ram_for_op(req)
        target = req.get("target")
        if target not in (None, self.config.host_name):
            raise ControlError(f"reintegration onto {target} needs the main-host move; "
                               f"only the main host ({self.config.host_name}) can be the "
                               f"target for now", errno.EOPNOTSUPP)
        return _started("the reintegration", lambda: self.operations.reintegration(
            path, ram, _strategy_arg(req), request_id=_request_id(req)))

    # -- main-host moves (agent.mainmove) ---------------------------------------------

    def _main_migrate(self, req: dict[str, Any]) -> dict[str, Any]:
        """Move the VM's vCPUs, devices and resident pages to ``dest`` (libvirt)."""
        return _started("the main-host move", lambda: self.main_moves.migrate(req))

    def _main_prepare_source(self, req: dict[str, Any]) -> dict[str, Any]:
        """This host's side of a move whose libvirt migration Nova runs: freeze,
        x-ignore-shared, export (no virsh)."""
        return _refused(lambda: self.main_moves.prepare_source(req))

    def _main_finish_source(self, req: dict[str, Any]) -> dict[str, Any]:
        """That libvirt migration ended (``ok``): commit or roll back this side."""
        return _refused(lambda: self.main_moves.finish_source(req))

    def _incoming_prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.main_moves.prepare(req)

    def _incoming_commit(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.main_moves.commit(req)

    def _incoming_abort(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.main_moves.abort_incoming(req)

    def _main_moves(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, **self.main_moves.stats()}

    def _domain_start(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.main_moves.domain_start(req)

    def _domain_started(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.main_moves.domain_started(req)

    def _domain_stopped(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.main_moves.domain_stopped(req)

    def _op(self, req: dict[str, Any]) -> Any:
        try:
            return self.operations.get(_str_arg(req, "id"))
        except OperationError as exc:
            raise ControlError(str(exc), exc.errno) from exc

    def _op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        op = self._op(req)
        wait = req.get("wait", 0)
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
            op.wait(min(float(wait), 60.0))
        return {"ok": True, **op.progress()}

    def _ops_list(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "ops": self.operations.all()}

    def _op_abort(self, req: dict[str, Any]) -> dict[str, Any]:
        op = self._op(req)
        try:
            self.operations.abort(op.id)
        except OperationError as exc:
            raise ControlError(str(exc), exc.errno) from exc
        return {"ok": True, **op.progress()}


def _endpoint(raw: Any) -> Endpoint:
    host = parse_host(raw, "dest")
    return Endpoint(host.name, host.address, host.port)


def _strategy_arg(req: dict[str, Any]) -> str | None:
    """The request's transfer strategy (None: the agent's default_strategy)."""
    value = req.get("strategy")
    return None if value is None or value == "" else str(value)


def _request_id(req: dict[str, Any]) -> str | None:
    rid = req.get("request_id")
    if rid is None:
        return None
    if not isinstance(rid, str) or not 0 < len(rid) <= 64:
        raise ControlError("'request_id' must be a string of 1-64 characters")
    return rid


def _refused(handle: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A handler's reply, or its refusal (an ``OperationError``) as a control error."""
    try:
        return handle()
    except OperationError as exc:
        raise ControlError(str(exc), exc.errno) from exc


def _started(what: str, start: Callable[[], Operation]) -> dict[str, Any]:
    """Start an operation: its progress, or the refusal as a control error."""
    try:
        op = start()
    except OperationError as exc:
        raise ControlError(str(exc), exc.errno) from exc
    except (FabricError, ValueError) as exc:
        raise ControlError(f"cannot start {what}: {exc}", errno.EHOSTUNREACH) from exc
    return {"ok": True, **op.progress()}
