"""Host maintenance through Nova: a compute service disabled with a maintenance
reason has every split-instance part drained from its host.

Nova sends the versioned notification ``service.update`` (payload
``ServiceStatusPayload``: host, binary, disabled, disabled_reason, forced_down)
when ``openstack compute service set --disable --disable-reason R`` changes a
service (``nova/objects/service.py``; needs ``[notifications] notification_format``
``versioned`` or ``both``). The engine listens on Nova's versioned topic with its
own pool, so Nova's other listeners still get every message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import oslo_messaging as messaging

from nova_ipmigrate import exception

LOG = logging.getLogger(__name__)

EVENT = "service.update"
BINARY = "nova-compute"
#: the listener's pool: one copy of each notification for the engines
POOL = "ipmigrate-engine"


def service_status(payload: dict[str, Any]) -> dict[str, Any]:
    """The fields of a versioned ``ServiceStatusPayload`` (or of an already
    unwrapped dict)."""
    return dict(payload.get("nova_object.data", payload))


def is_maintenance(reason: str | None, reasons: Sequence[str]) -> bool:
    """Whether a disable reason asks for a drain: it starts with one of ``reasons``
    (case-insensitive), e.g. ``maintenance`` matches ``Maintenance: new DIMMs``."""
    text = (reason or "").strip().lower()
    return any(text.startswith(r.strip().lower()) for r in reasons if r.strip())


class ServiceUpdateEndpoint:
    """Notification endpoint: ``drain(host)`` for each compute service disabled
    with a maintenance reason (a drain already running there is left alone)."""

    filter_rule = messaging.NotificationFilter(event_type=EVENT.replace(".", r"\."))

    def __init__(self, drain: Callable[[str], Any], reasons: Sequence[str],
                 known: Callable[[str], bool] | None = None) -> None:
        self.drain = drain
        self.reasons = list(reasons)
        self.known = known or (lambda host: True)
        #: hosts drained by this endpoint (host -> the drain operation or the refusal)
        self.seen: dict[str, Any] = {}

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: dict[str, Any],
             metadata: dict[str, Any]) -> Any:
        if event_type != EVENT:
            return None
        s = service_status(payload)
        host = str(s.get("host") or "")
        if s.get("binary") != BINARY or not s.get("disabled") or not host:
            return messaging.NotificationResult.HANDLED
        if not is_maintenance(s.get("disabled_reason"), self.reasons):
            LOG.info("%s disabled (%r): not a maintenance reason, nothing drained", host,
                     s.get("disabled_reason"))
            return messaging.NotificationResult.HANDLED
        if not self.known(host):
            LOG.info("%s disabled for maintenance: not a host of this engine", host)
            return messaging.NotificationResult.HANDLED
        try:
            op = self.drain(host)
            LOG.info("%s disabled for maintenance (%r): drain %s", host,
                     s.get("disabled_reason"), op.get("id") if isinstance(op, dict) else op)
            self.seen[host] = op
        except exception.Conflict as exc:
            LOG.info("%s disabled for maintenance: %s", host, exc.format_message())
            self.seen[host] = exc
        except exception.IPMigrateException as exc:
            LOG.error("%s disabled for maintenance, drain refused: %s", host,
                      exc.format_message())
            self.seen[host] = exc
        return messaging.NotificationResult.HANDLED


def listener(transport: messaging.Transport, endpoint: ServiceUpdateEndpoint,
             topic: str = "versioned_notifications") -> Any:
    """A threading notification listener of Nova's versioned topic."""
    return messaging.get_notification_listener(
        transport, [messaging.Target(topic=topic)], [endpoint], executor="threading",
        pool=POOL)
