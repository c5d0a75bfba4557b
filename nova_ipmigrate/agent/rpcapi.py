"""Client side of the agent RPC API (the server side: :mod:`nova_ipmigrate.agent.manager`).

Every agent serves topic :data:`TOPIC` in exchange :data:`EXCHANGE`, as server
= its host name (``[agent] host``); a call goes to one agent with
``prepare(server=host)``. Errors the agent refuses a request with come back as
the :mod:`nova_ipmigrate.exception` class it raised (``Invalid``, ``NotFound``,
``Conflict``, ``Unavailable``, ``InsufficientCapacity``); an agent that does
not answer gives ``oslo_messaging.MessagingTimeout``.
"""

from __future__ import annotations

from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg

from nova_ipmigrate import rpc
from nova_ipmigrate.conf import CONF

#: the topic every agent's RPC server listens on (server = its host name)
TOPIC = "ipmigrate-agent"
#: a fixed exchange, so that a client inside a Nova service (control_exchange
#: "nova") and the agents (default "openstack") meet
EXCHANGE = "ipmigrate"
#: the newest version of the API this module knows
RPC_API_VERSION = "1.2"
#: op_status(wait=...) is capped at this many seconds by the agent
MAX_OP_WAIT = 60.0


def server_target(host: str) -> messaging.Target:
    """The target an agent's RPC server listens on."""
    return messaging.Target(exchange=EXCHANGE, topic=TOPIC, server=host)


class AgentAPI:
    """Client side of the agent RPC API.

    API version history:

        * 1.0 - Initial version: stats, agent_stats, parts, endpoint, page_map,
                ops, op_status, set_remote, split, partial_migrate,
                reintegrate, op_abort
        * 1.1 - Main-host moves: main_migrate, incoming_prepare, incoming_commit,
                incoming_abort, main_moves
        * 1.2 - Main-host moves whose libvirt migration the caller runs (Nova's
                driver): main_prepare_source, main_finish_source

    A new method or argument bumps the minor version here and in
    ``AgentManager.target``; the client checks ``can_send_version()`` and
    falls back (or refuses) for agents pinned to an older version with
    ``[agent] rpc_version_cap``.
    """

    #: names usable for [agent] rpc_version_cap besides version numbers
    VERSION_ALIASES: dict[str, str] = {}

    def __init__(self, conf: cfg.ConfigOpts | None = None,
                 transport: messaging.Transport | None = None,
                 version_cap: str | None = None, timeout: float | None = None) -> None:
        """``transport`` defaults to :data:`nova_ipmigrate.rpc.TRANSPORT` (after
        :func:`nova_ipmigrate.rpc.init`); ``version_cap`` and ``timeout`` to
        ``[agent] rpc_version_cap`` and ``[agent] rpc_timeout`` (else
        ``[DEFAULT] rpc_response_timeout``)."""
        conf = CONF if conf is None else conf
        rpc.register_opts(conf)
        if version_cap is None:
            version_cap = conf.agent.rpc_version_cap
        version_cap = self.VERSION_ALIASES.get(version_cap or "", version_cap)
        if timeout is None:
            timeout = conf.agent.rpc_timeout or conf.rpc_response_timeout
        self.timeout = float(timeout)
        target = messaging.Target(exchange=EXCHANGE, topic=TOPIC, version=RPC_API_VERSION)
        self.client = rpc.get_client(target, version_cap=version_cap, transport=transport,
                                     timeout=self.timeout)

    def _prepare(self, host: str, version: str = "1.0",
                 timeout: float | None = None) -> Any:
        return self.client.prepare(server=host, version=version,
                                   timeout=timeout or self.timeout)

    def _call(self, ctxt: Any, host: str, method: str, version: str = "1.0",
              timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._prepare(host, version, timeout).call(
            ctxt, method, **kwargs)
        return result

    # -- read-only -------------------------------------------------------------------

    def stats(self, ctxt: Any, host: str) -> dict[str, Any]:
        """The memfs statistics of ``host`` (``{"ok", "stats"}``)."""
        return self._call(ctxt, host, "stats")

    def agent_stats(self, ctxt: Any, host: str) -> dict[str, Any]:
        """Sub-host store, fabric and memfs statistics of ``host``."""
        return self._call(ctxt, host, "agent_stats")

    def parts(self, ctxt: Any, host: str) -> dict[str, Any]:
        """The split VMs ``host`` is the main host of, with the pages on each host."""
        return self._call(ctxt, host, "parts")

    def endpoint(self, ctxt: Any, host: str) -> dict[str, Any]:
        """``host``'s fabric endpoint ``{name, address, port}`` (a sub-host or ``dest``)."""
        return self._call(ctxt, host, "endpoint")

    def page_map(self, ctxt: Any, host: str, path: str) -> dict[str, Any]:
        return self._call(ctxt, host, "page_map", path=path)

    def ops(self, ctxt: Any, host: str) -> dict[str, Any]:
        """The part-move operations of ``host`` (``{"ok", "ops": [...]}``)."""
        return self._call(ctxt, host, "ops")

    def op_status(self, ctxt: Any, host: str, op_id: str, wait: float = 0) -> dict[str, Any]:
        """An operation's progress; ``wait`` > 0: wait up to that long (at most 60 s)
        for it to end first (the call's timeout grows by the wait)."""
        extra = min(max(float(wait), 0.0), MAX_OP_WAIT) if isinstance(wait, (int, float)) \
            else 0.0
        return self._call(ctxt, host, "op_status", timeout=self.timeout + extra,
                          id=op_id, wait=wait)

    # -- changes ---------------------------------------------------------------------

    def set_remote(self, ctxt: Any, host: str, path: str, vm: str,
                   sub_hosts: list[dict[str, Any]]) -> dict[str, Any]:
        """Give a RAM file on ``host`` its VM UUID and sub-hosts (``{name, address, port}``)."""
        return self._call(ctxt, host, "set_remote", path=path, vm=vm, sub_hosts=sub_hosts)

    def split(self, ctxt: Any, host: str, path: str, resident_limit: int,
              sub_hosts: list[dict[str, Any]], vm: str | None = None) -> dict[str, Any]:
        """Split migration of a running VM's RAM file on its main host ``host``."""
        return self._call(ctxt, host, "split", path=path, resident_limit=resident_limit,
                          sub_hosts=sub_hosts, vm=vm)

    def partial_migrate(self, ctxt: Any, host: str, path: str, source: str,
                        dest: dict[str, Any], strategy: str = "ipmigrate",
                        max_rate_mb_s: float | None = None,
                        request_id: str | None = None) -> dict[str, Any]:
        """Start moving the part sub-host ``source`` holds of the VM whose main host is
        ``host`` to ``dest`` (``{name, address, port}``); returns the operation."""
        return self._call(ctxt, host, "partial_migrate", path=path, source=source,
                          dest=dest, strategy=strategy, max_rate_mb_s=max_rate_mb_s,
                          request_id=request_id)

    def reintegrate(self, ctxt: Any, host: str, path: str, target: str | None = None,
                    strategy: str = "ipmigrate",
                    request_id: str | None = None) -> dict[str, Any]:
        """Start bringing every part of the VM home to its main host ``host``."""
        return self._call(ctxt, host, "reintegrate", path=path, target=target,
                          strategy=strategy, request_id=request_id)

    def op_abort(self, ctxt: Any, host: str, op_id: str) -> dict[str, Any]:
        return self._call(ctxt, host, "op_abort", id=op_id)

    # -- main-host moves (1.1) -----------------------------------------------------------

    def main_migrate(self, ctxt: Any, host: str, path: str, dest: dict[str, Any],
                     request_id: str | None = None) -> dict[str, Any]:
        """Start moving the VM whose main host is ``host`` to ``dest`` (libvirt);
        returns the operation (``details`` has its phase)."""
        return self._call(ctxt, host, "main_migrate", version="1.1", path=path, dest=dest,
                          request_id=request_id)

    def incoming_prepare(self, ctxt: Any, host: str, vm: str, size: int,
                         resident_limit: int, source: dict[str, Any]) -> dict[str, Any]:
        return self._call(ctxt, host, "incoming_prepare", version="1.1", vm=vm, size=size,
                          resident_limit=resident_limit, source=source)

    def incoming_commit(self, ctxt: Any, host: str, vm: str, then: str = "pull",
                        request_id: str | None = None) -> dict[str, Any]:
        return self._call(ctxt, host, "incoming_commit", version="1.1", vm=vm, then=then,
                          request_id=request_id)

    def incoming_abort(self, ctxt: Any, host: str, vm: str) -> dict[str, Any]:
        return self._call(ctxt, host, "incoming_abort", version="1.1", vm=vm)

    def main_moves(self, ctxt: Any, host: str) -> dict[str, Any]:
        return self._call(ctxt, host, "main_moves", version="1.1")

    # -- main-host moves run by Nova's libvirt driver (1.2) ------------------------------

    def main_prepare_source(self, ctxt: Any, host: str, vm: str, dest: dict[str, Any],
                            path: str | None = None) -> dict[str, Any]:
        """Before a libvirt migration the caller runs: ``host`` (the main host of
        ``vm``) freezes its RAM file, sets x-ignore-shared and exports the directory
        for ``dest`` (``{name, address, port}``); ``{ok, vm, path, domain}``."""
        return self._call(ctxt, host, "main_prepare_source", version="1.2", vm=vm,
                          dest=dest, path=path)

    def main_finish_source(self, ctxt: Any, host: str, vm: str, ok: bool) -> dict[str, Any]:
        """After it: ``ok``, ``host``'s side is committed (the new main host pulls its
        pages), else rolled back (the VM goes on at ``host``)."""
        return self._call(ctxt, host, "main_finish_source", version="1.2", vm=vm, ok=ok)
