"""The agent's RPC endpoint: the control operations of an :class:`Agent`, over
oslo.messaging (topic :data:`nova_ipmigrate.agent.rpcapi.TOPIC`, server = the host).

Each method takes the request context and keyword arguments named like the keys of
the control-socket request, checks their types (a malformed call raises
:class:`~nova_ipmigrate.exception.Invalid` and changes nothing), runs the agent's
own handler of that operation, and returns its reply dict. A refusal of the
handler (``ControlError`` / ``FsError`` with an errno) is raised as the matching
:mod:`nova_ipmigrate.exception` class, which the caller gets back as that class.

The management of memfs itself (``create``, ``set_limit``, ``shutdown``) stays on
the local control socket.

The server side of the API version history in :mod:`nova_ipmigrate.agent.rpcapi`.
"""

from __future__ import annotations

from typing import Any

import oslo_messaging as messaging

from nova_ipmigrate import exception
from nova_ipmigrate.memfs.control import ControlError
from nova_ipmigrate.memfs.tree import FsError
from nova_ipmigrate.remotable import NUMBER, remotable


def _drop_none(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class AgentManager:
    """RPC endpoint of one agent. API 1.2, see :class:`~.rpcapi.AgentAPI`."""

    target = messaging.Target(version="1.2")

    def __init__(self, agent: Any) -> None:
        #: a started :class:`nova_ipmigrate.agent.service.Agent`
        self.agent = agent

    def _handle(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        """Run the agent's handler of control operation ``op``."""
        handler = self.agent.control.extra[op]
        try:
            reply: dict[str, Any] = handler({"op": op, **req})
        except ControlError as exc:
            raise exception.from_errno(str(exc), exc.errno) from None
        except FsError as exc:
            raise exception.from_errno(str(exc), exc.errno) from None
        return reply

    # -- read-only -----------------------------------------------------------------------

    @remotable()
    def stats(self, context: Any) -> dict[str, Any]:
        """The memfs ``stats`` of this host (as the control socket returns them)."""
        return {"ok": True, "stats": self.agent.memfs.stats()}

    @remotable()
    def agent_stats(self, context: Any) -> dict[str, Any]:
        return self._handle("agent_stats", {})

    @remotable()
    def parts(self, context: Any) -> dict[str, Any]:
        return self._handle("parts", {})

    @remotable()
    def endpoint(self, context: Any) -> dict[str, Any]:
        """This host's fabric endpoint ``{name, address, port}``: what other agents are
        given as a sub-host or a ``dest``."""
        return {"name": self.agent.config.host_name,
                "address": self.agent.advertise_address, "port": self.agent.fabric.port}

    @remotable(path=str)
    def page_map(self, context: Any, path: str) -> dict[str, Any]:
        return self._handle("page_map", {"path": path})

    @remotable()
    def ops(self, context: Any) -> dict[str, Any]:
        return self._handle("ops", {})

    @remotable(id=str, wait=NUMBER)
    def op_status(self, context: Any, id: str, wait: float = 0) -> dict[str, Any]:
        """An operation's progress; with ``wait`` > 0, first wait up to that many
        seconds (at most 60) for it to end."""
        return self._handle("op_status", {"id": id, "wait": wait})

    # -- changes -------------------------------------------------------------------------

    @remotable(path=str, vm=str, sub_hosts=list)
    def set_remote(self, context: Any, path: str, vm: str,
                   sub_hosts: list[dict[str, Any]]) -> dict[str, Any]:
        return self._handle("set_remote", {"path": path, "vm": vm, "sub_hosts": sub_hosts})

    @remotable(path=str, resident_limit=int, vm=str, sub_hosts=list)
    def split(self, context: Any, path: str, resident_limit: int,
              sub_hosts: list[dict[str, Any]], vm: str | None = None) -> dict[str, Any]:
        """Split migration of a running VM's RAM file (``vm`` is needed the first time)."""
        return self._handle("split", _drop_none(path=path, resident_limit=resident_limit,
                                                sub_hosts=sub_hosts, vm=vm))

    @remotable(path=str, source=str, dest=dict, strategy=str, max_rate_mb_s=NUMBER,
               request_id=str)
    def partial_migrate(self, context: Any, path: str, source: str, dest: dict[str, Any],
                        strategy: str = "ipmigrate", max_rate_mb_s: float | None = None,
                        request_id: str | None = None) -> dict[str, Any]:
        return self._handle("partial_migrate", _drop_none(
            path=path, source=source, dest=dest, strategy=strategy,
            max_rate_mb_s=max_rate_mb_s, request_id=request_id))

    @remotable(path=str, target=str, strategy=str, request_id=str)
    def reintegrate(self, context: Any, path: str, target: str | None = None,
                    strategy: str = "ipmigrate", request_id: str | None = None,
                    ) -> dict[str, Any]:
        return self._handle("reintegrate", _drop_none(
            path=path, target=target, strategy=strategy, request_id=request_id))

    @remotable(id=str)
    def op_abort(self, context: Any, id: str) -> dict[str, Any]:
        return self._handle("op_abort", {"id": id})

    # -- main-host moves (1.1) -----------------------------------------------------------

    @remotable(path=str, dest=dict, request_id=str)
    def main_migrate(self, context: Any, path: str, dest: dict[str, Any],
                     request_id: str | None = None) -> dict[str, Any]:
        """Start the main-host move of the VM whose RAM file is ``path`` to ``dest``."""
        return self._handle("main_migrate", _drop_none(path=path, dest=dest,
                                                       request_id=request_id))

    @remotable(vm=str, size=int, resident_limit=int, source=dict)
    def incoming_prepare(self, context: Any, vm: str, size: int, resident_limit: int,
                         source: dict[str, Any]) -> dict[str, Any]:
        """Expect the main-host move of ``vm`` from ``source`` to this host."""
        return self._handle("incoming_prepare", {"vm": vm, "size": size,
                                                 "resident_limit": resident_limit,
                                                 "source": source})

    @remotable(vm=str, then=str, request_id=str)
    def incoming_commit(self, context: Any, vm: str, then: str = "pull",
                        request_id: str | None = None) -> dict[str, Any]:
        """libvirt moved ``vm`` here: page out again, then pull or reintegrate."""
        return self._handle("incoming_commit", _drop_none(vm=vm, then=then,
                                                          request_id=request_id))

    @remotable(vm=str)
    def incoming_abort(self, context: Any, vm: str) -> dict[str, Any]:
        return self._handle("incoming_abort", {"vm": vm})

    @remotable()
    def main_moves(self, context: Any) -> dict[str, Any]:
        return self._handle("main_moves", {})

    # -- main-host moves run by Nova's libvirt driver (1.2) ------------------------------

    @remotable(vm=str, dest=dict, path=str)
    def main_prepare_source(self, context: Any, vm: str, dest: dict[str, Any],
                            path: str | None = None) -> dict[str, Any]:
        """This host's side of the move of ``vm`` to ``dest`` whose libvirt migration
        the caller runs: freeze, x-ignore-shared, export (``{ok, vm, path, domain}``)."""
        return self._handle("main_prepare_source", _drop_none(vm=vm, dest=dest, path=path))

    @remotable(vm=str, ok=bool)
    def main_finish_source(self, context: Any, vm: str, ok: bool) -> dict[str, Any]:
        """That libvirt migration ended: commit (``ok``) or roll back this side."""
        return self._handle("main_finish_source", {"vm": vm, "ok": ok})
