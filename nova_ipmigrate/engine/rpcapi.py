"""Client side of the engine's RPC API (topic ``ipmigrate-engine``).

API version history (the server side is :mod:`nova_ipmigrate.engine.manager`):

* 1.0: partial_migration, reintegration, split, host_drain, list_operations,
  show_operation, abort_operation
* 1.1: show_vm
* 1.2: main_host_migration; reintegration onto a host other than the main host
* 1.3: split without sub_hosts/resident_limit (a backend that schedules: the
  flavor says how, Nova's scheduler where); reconcile

Errors of the engine (``nova_ipmigrate.exception``) come back as the same classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import oslo_messaging as messaging

from nova_ipmigrate import rpc
from nova_ipmigrate.engine import TOPIC

VERSION_CAP = "1.3"


class EngineAPI:
    def __init__(self, transport: messaging.Transport, timeout: float | None = None,
                 server: str | None = None) -> None:
        target = messaging.Target(topic=TOPIC, version="1.0", server=server)
        self.client = rpc.get_client(target, version_cap=VERSION_CAP, transport=transport,
                                     timeout=timeout)

    def _call(self, ctxt: Any, method: str, version: str = "1.0", **kwargs: Any) -> Any:
        return self.client.prepare(version=version).call(ctxt, method, **kwargs)

    def partial_migration(self, ctxt: Any, vm: str, source_host: str,
                          dest_host: str | None = None, strategy: str = "ipmigrate",
                          max_rate_mb_s: float | None = None) -> dict[str, Any]:
        return self._call(ctxt, "partial_migration", vm=vm, source_host=source_host,
                          dest_host=dest_host, strategy=strategy,
                          max_rate_mb_s=max_rate_mb_s)

    def reintegration(self, ctxt: Any, vm: str, target_host: str | None = None,
                      strategy: str = "ipmigrate") -> dict[str, Any]:
        return self._call(ctxt, "reintegration", vm=vm, target_host=target_host,
                          strategy=strategy)

    def split(self, ctxt: Any, main_host: str, path: str, vm: str,
              sub_hosts: Sequence[str] = (), resident_limit: int | None = None
              ) -> dict[str, Any]:
        if not sub_hosts or resident_limit is None:   # the backend decides: 1.3
            return self._call(ctxt, "split", version="1.3", main_host=main_host, path=path,
                              vm=vm, sub_hosts=list(sub_hosts),
                              resident_limit=resident_limit)
        return self._call(ctxt, "split", main_host=main_host, path=path, vm=vm,
                          sub_hosts=list(sub_hosts), resident_limit=resident_limit)

    def reconcile(self, ctxt: Any) -> dict[str, Any]:
        return self._call(ctxt, "reconcile", version="1.3")

    def host_drain(self, ctxt: Any, host: str, exclude: Sequence[str] = ()) -> dict[str, Any]:
        return self._call(ctxt, "host_drain", host=host, exclude=list(exclude))

    def list_operations(self, ctxt: Any, vm: str | None = None,
                        state: str | None = None) -> list[dict[str, Any]]:
        return self._call(ctxt, "list_operations", vm=vm, state=state)

    def show_operation(self, ctxt: Any, op_id: str) -> dict[str, Any]:
        return self._call(ctxt, "show_operation", op_id=op_id)

    def abort_operation(self, ctxt: Any, op_id: str) -> dict[str, Any]:
        return self._call(ctxt, "abort_operation", op_id=op_id)

    def main_host_migration(self, ctxt: Any, vm: str, dest_host: str | None = None,
                            then: str = "pull") -> dict[str, Any]:
        """Move ``vm``'s main host (vCPUs, devices, resident pages) to ``dest_host``
        (None: the engine chooses); ``then`` pull the old main host's pages there, or
        ``reintegrate`` every part onto it."""
        return self._call(ctxt, "main_host_migration", version="1.2", vm=vm,
                          dest_host=dest_host, then=then)

    def show_vm(self, ctxt: Any, vm: str) -> dict[str, Any]:
        return self._call(ctxt, "show_vm", version="1.1", vm=vm)
