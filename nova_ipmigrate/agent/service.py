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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova_ipmigrate.agent import placement
from nova_ipmigrate.agent.remote import FabricRemotePaging, SubHost
from nova_ipmigrate.agent.substore import SubHostStore
from nova_ipmigrate.fabric import auth
from nova_ipmigrate.fabric.server import FabricServer
from nova_ipmigrate.memfs.control import ControlError, ControlServer, _str_arg
from nova_ipmigrate.memfs.server import MemFS, MemfsConfig

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


class Agent:
    def __init__(self, config: AgentConfig, on_shutdown: Any = None) -> None:
        self.config = config
        self.memfs = MemFS(config.memfs)
        self.substore = SubHostStore(config.substore_mb * 2**20 // PAGE)
        self.fabric = FabricServer(config.fabric_address, config.fabric_port, config.host_name,
                                   config.key, self.substore, tls=config.tls)
        self.control = ControlServer(self.memfs, config.control_socket,
                                     on_shutdown or (lambda: None),
                                     extra={"set_remote": self._set_remote,
                                            "split": self._split,
                                            "page_map": self._page_map,
                                            "agent_stats": self._agent_stats})
        self._remotes: dict[str, FabricRemotePaging] = {}

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
        if ram.remote is None:
            self._set_remote(req)
        resident = ram.table.resident if ram.table is not None else 0
        self.memfs.set_resident_limit(path, limit)
        return {"ok": True, "pages_to_move": max(0, resident - limit // PAGE)}

    def _page_map(self, req: dict[str, Any]) -> dict[str, Any]:
        ram = self.memfs.find(_str_arg(req, "path"))
        if ram.table is None:
            raise ControlError("the RAM file has no size yet")
        holders = {str(i + 1): s.name for i, s in
                   enumerate(getattr(ram.remote, "sub_hosts", []))}
        return {"ok": True, "host": self.config.host_name, "map": ram.table.page_map(),
                "holders": holders, "stats": ram.stats()}

    def _agent_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        fab = self.fabric.stats()
        return {"ok": True, "host": self.config.host_name, "substore": self.substore.stats(),
                "fabric": dataclasses.asdict(fab),
                "memfs": self.memfs.stats()}
