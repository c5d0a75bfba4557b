"""Nova's ``service.update`` notifications: a compute service disabled for
maintenance drains its host."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import oslo_messaging as messaging
import pytest
from oslo_config import cfg

from nova_ipmigrate import exception
from nova_ipmigrate.accounting import maintenance
from nova_ipmigrate.accounting.maintenance import ServiceUpdateEndpoint, is_maintenance

REASONS = ["maintenance", " Hardware "]
HANDLED = messaging.NotificationResult.HANDLED


def _payload(host: str = "host2", binary: str = "nova-compute", disabled: bool = True,
             reason: str | None = "Maintenance: new DIMMs") -> dict[str, Any]:
    """A versioned ``ServiceStatusPayload``, as Nova sends it."""
    return {"nova_object.name": "ServiceStatusPayload", "nova_object.namespace": "nova",
            "nova_object.version": "1.1",
            "nova_object.data": {"host": host, "binary": binary, "disabled": disabled,
                                 "disabled_reason": reason, "forced_down": False,
                                 "topic": "compute", "report_count": 1, "version": 66,
                                 "availability_zone": None, "uuid": "svc-uuid",
                                 "last_seen_up": None}}


class Drains:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.raises: Exception | None = None
        self.done = threading.Event()

    def __call__(self, host: str) -> dict[str, Any]:
        self.hosts.append(host)
        self.done.set()
        if self.raises is not None:
            raise self.raises
        return {"id": f"drain-{host}"}


@pytest.fixture
def drains() -> Drains:
    return Drains()


@pytest.mark.parametrize(("reason", "expected"), [
    ("maintenance", True), ("Maintenance: new DIMMs", True), ("  MAINTENANCE window", True),
    ("hardware swap", True), ("HardWare", True),
    ("planned maintenance", False), ("maint", False), ("", False), (None, False),
    ("disabled by ops", False),
])
def test_is_maintenance(reason: str | None, expected: bool) -> None:
    assert is_maintenance(reason, REASONS) is expected


def test_blank_reasons_match_nothing() -> None:
    assert not is_maintenance("anything", ["", "  "])
    assert not is_maintenance("anything", [])


def test_maintenance_drains(drains: Drains) -> None:
    ep = ServiceUpdateEndpoint(drains, REASONS)
    assert ep.info({}, "nova-compute:host2", "service.update", _payload(), {}) == HANDLED
    assert drains.hosts == ["host2"]
    assert ep.seen == {"host2": {"id": "drain-host2"}}


def test_unwrapped_payload(drains: Drains) -> None:
    ep = ServiceUpdateEndpoint(drains, REASONS)
    ep.info({}, "p", "service.update", dict(_payload()["nova_object.data"]), {})
    assert drains.hosts == ["host2"]


@pytest.mark.parametrize("payload", [
    _payload(binary="nova-conductor"),
    _payload(disabled=False),
    _payload(reason="disabled by ops"),
    _payload(reason=None),
    _payload(host=""),
])
def test_ignored(drains: Drains, payload: dict[str, Any]) -> None:
    ep = ServiceUpdateEndpoint(drains, REASONS)
    assert ep.info({}, "p", "service.update", payload, {}) == HANDLED
    assert drains.hosts == [] and ep.seen == {}


def test_other_event_ignored(drains: Drains) -> None:
    ep = ServiceUpdateEndpoint(drains, REASONS)
    assert ep.info({}, "p", "service.create", _payload(), {}) is None
    assert drains.hosts == []


def test_unknown_host_ignored(drains: Drains) -> None:
    ep = ServiceUpdateEndpoint(drains, REASONS, known=lambda h: h in ("host1",))
    assert ep.info({}, "p", "service.update", _payload(), {}) == HANDLED
    assert drains.hosts == []
    ep.info({}, "p", "service.update", _payload(host="host1"), {})
    assert drains.hosts == ["host1"]


@pytest.mark.parametrize("exc", [
    exception.Conflict("host2 is being drained by operation x", reason="operation x"),
    exception.Invalid("host2 is not a known host", reason="unknown host"),
])
def test_refused_drain_tolerated(drains: Drains, exc: Exception) -> None:
    drains.raises = exc
    ep = ServiceUpdateEndpoint(drains, REASONS)
    assert ep.info({}, "p", "service.update", _payload(), {}) == HANDLED
    assert drains.hosts == ["host2"]
    assert ep.seen["host2"] is exc


# -- a real notification round trip -------------------------------------------------


@pytest.fixture
def transport() -> Iterator[messaging.Transport]:
    conf = cfg.ConfigOpts()
    conf([], project="nova-ipmigrate-test", default_config_files=[],
         default_config_dirs=[])
    t = messaging.get_notification_transport(conf, url="fake://")
    yield t
    t.cleanup()


def test_notification_round_trip(transport: messaging.Transport, drains: Drains) -> None:
    ep = ServiceUpdateEndpoint(drains, REASONS)
    listener = maintenance.listener(transport, ep, topic="versioned_notifications")
    listener.start()
    try:
        notifier = messaging.Notifier(transport, driver="messaging",
                                      topics=["versioned_notifications"],
                                      publisher_id="nova-compute:host2")
        # a filtered-out event first, then the one that drains
        notifier.info({}, "service.create", _payload(host="host9"))
        notifier.info({}, "service.update", _payload(reason="disabled by ops"))
        notifier.info({}, "service.update", _payload())
        assert drains.done.wait(10), "the drain callback never ran"
        assert drains.hosts == ["host2"]
        assert ep.seen == {"host2": {"id": "drain-host2"}}
    finally:
        listener.stop()
        listener.wait()
