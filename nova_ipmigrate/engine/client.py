"""Helpers for the lab and operators until the OpenStack client plugin exists:
connect to the engine, request an operation, wait for it with its progress.

    api = client.connect(conf)                  # [DEFAULT] transport_url
    op = client.partial_migration(api, "vm-uuid", "h2", dest_host="h4")
    op = client.wait(api, op["id"])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from nova_ipmigrate import rpc
from nova_ipmigrate.engine.inventory import TRANSIENT
from nova_ipmigrate.engine.models import FINAL_STATES
from nova_ipmigrate.engine.rpcapi import EngineAPI

CTXT: dict[str, Any] = {}


def connect(conf: cfg.ConfigOpts, url: str | None = None,
            timeout: float | None = 60.0) -> EngineAPI:
    """An EngineAPI on a transport of its own (``url`` or ``[DEFAULT] transport_url``)."""
    rpc.register_opts(conf)
    return EngineAPI(rpc.get_rpc_transport(conf, url=url), timeout=timeout)


def partial_migration(api: EngineAPI, vm: str, source_host: str, dest_host: str | None = None,
                      strategy: str = "ipmigrate",
                      max_rate_mb_s: float | None = None) -> dict[str, Any]:
    return api.partial_migration(CTXT, vm, source_host, dest_host=dest_host,
                                 strategy=strategy, max_rate_mb_s=max_rate_mb_s)


def reintegration(api: EngineAPI, vm: str, strategy: str = "ipmigrate") -> dict[str, Any]:
    return api.reintegration(CTXT, vm, strategy=strategy)


def host_drain(api: EngineAPI, host: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    return api.host_drain(CTXT, host, exclude=exclude)


def show(api: EngineAPI, op_id: str) -> dict[str, Any]:
    return api.show_operation(CTXT, op_id)


def abort(api: EngineAPI, op_id: str) -> dict[str, Any]:
    return api.abort_operation(CTXT, op_id)


def wait(api: EngineAPI, op_id: str, timeout: float = 600.0, interval: float = 0.5,
         on_progress: Callable[[dict[str, Any]], None] | None = None,
         ctxt: Any = None) -> dict[str, Any]:
    """Poll the operation until it ends; its final dict (TimeoutError past ``timeout``).
    A poll that fails for a reason that may pass (the broker restarting, the engine
    restarting) is tried again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            op = api.show_operation(CTXT if ctxt is None else ctxt, op_id)
        except TRANSIENT:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)
            continue
        if on_progress is not None:
            on_progress(op)
        if op["state"] in FINAL_STATES:
            return op
        if time.monotonic() > deadline:
            raise TimeoutError(f"operation {op_id} still {op['state']} after {timeout:.0f}s")
        time.sleep(interval)


def describe(op: dict[str, Any]) -> str:
    """One line for an operation."""
    pr = op.get("progress") or {}
    done, total = int(pr.get("pages_done", 0)), int(pr.get("pages_total", 0))
    if op.get("kind") == "host_drain":
        where = f"of {op.get('source_host')}"
    elif op.get("source_host"):
        where = f"{op.get('source_host')} -> {op.get('dest_host')}"
    else:
        where = f"-> {op.get('dest_host') or op.get('main_host')}"
    line = (f"{op['id']} {op['kind']} {op.get('vm') or ''} {where} {op['state']}"
            f" ({op.get('step')}) {done}/{total} pages")
    return line + (f": {op['fault']}" if op.get("fault") else "")
