"""A stub of the Agent for the RPC endpoint's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OPS = ("set_remote", "split", "page_map", "agent_stats", "parts", "partial_migrate",
       "reintegrate", "op_status", "ops", "op_abort", "main_prepare_source",
       "main_finish_source")


class StubAgent:
    """What AgentManager uses of an Agent; every handler records its request."""

    def __init__(self, host: str = "h1") -> None:
        self.calls: list[dict[str, Any]] = []
        self.config = type("Config", (), {"host_name": host})()
        self.advertise_address = "192.0.2.7"
        self.fabric = type("Fabric", (), {"port": 47801})()
        self.memfs = type("MemFS", (), {"stats": staticmethod(lambda: {"files": {}})})()
        self.replies: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self.control = type("Control", (), {})()
        self.control.extra = {op: self._handler(op) for op in OPS}

    def _handler(self, op: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def handle(req: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(req)
            if op in self.replies:
                return self.replies[op](req)
            return {"ok": True, "host": self.config.host_name, "op": op}
        return handle
