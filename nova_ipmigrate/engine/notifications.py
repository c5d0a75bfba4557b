"""Versioned notifications of the engine's operations, in Nova's style.

Event types ``ipmigrate.operation.start|progress|end|error|abort``, publisher
``ipmigrate-engine:<host>``; the payload::

    {"ipmigrate_object.name": "OperationPayload",
     "ipmigrate_object.namespace": "ipmigrate",
     "ipmigrate_object.version": "1.0",
     "ipmigrate_object.data": {...the operation...}}

Progress notifications of one operation are at least ``progress_interval``
seconds apart.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from nova_ipmigrate.engine.models import Operation

LOG = logging.getLogger(__name__)

PAYLOAD_NAME = "OperationPayload"
PAYLOAD_VERSION = "1.0"
#: the keys of the payload's data (version 1.0)
PAYLOAD_FIELDS = ("id", "kind", "state", "step", "vm", "path", "main_host", "source_host",
                  "dest_host", "strategy", "parent_id", "agent_op_id", "request_id",
                  "progress", "fault", "created_at", "updated_at", "started_at",
                  "finished_at")
EVENTS = ("start", "progress", "end", "error", "abort")


def payload(op: Operation | dict[str, Any]) -> dict[str, Any]:
    data = op.to_dict() if isinstance(op, Operation) else op
    return {"ipmigrate_object.name": PAYLOAD_NAME,
            "ipmigrate_object.namespace": "ipmigrate",
            "ipmigrate_object.version": PAYLOAD_VERSION,
            "ipmigrate_object.data": {k: data.get(k) for k in PAYLOAD_FIELDS}}


class Notifications:
    def __init__(self, notifier: Any, host: str, progress_interval: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self.notifier = (notifier.prepare(publisher_id=f"ipmigrate-engine:{host}")
                         if notifier is not None else None)
        self.progress_interval = progress_interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def emit(self, op: Operation, event: str) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        if event != "progress":
            with self._lock:
                self._last.pop(op.id, None)
        if self.notifier is None:
            return
        try:
            method = self.notifier.error if event == "error" else self.notifier.info
            method({}, f"ipmigrate.operation.{event}", payload(op))
        except Exception:  # noqa: BLE001 - a notification never fails an operation
            LOG.exception("notification %s of %s", event, op.id)

    def progress(self, op: Operation) -> bool:
        """Send a progress notification unless one was sent too recently."""
        now = self._clock()
        with self._lock:
            last = self._last.get(op.id)
            if last is not None and now - last < self.progress_interval:
                return False
            self._last[op.id] = now
        self.emit(op, "progress")
        with self._lock:
            self._last[op.id] = now
        return True
