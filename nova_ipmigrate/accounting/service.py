"""The Nova side of an engine process (``[engine] backend = nova``): Nova's
configuration and clients, the maintenance listener, the periodic reconcile."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from nova_ipmigrate.accounting import maintenance, reconcile
from nova_ipmigrate.accounting.backend import NovaBackend

LOG = logging.getLogger(__name__)


def init_nova(config_files: list[str]) -> None:
    """Read Nova's configuration into Nova's global CONF (nova-ipmigrate's own is a
    separate one) and set up Nova's RPC and databases, in threading mode (Nova is
    not monkey-patched: :func:`nova.utils.concurrency_mode_threading`)."""
    from nova import config, objects

    objects.register_all()
    config.parse_args(["ipmigrate-engine"], default_config_files=list(config_files))


class NovaSide:
    """What an engine runs for its Nova backend besides the backend itself."""

    def __init__(self, backend: NovaBackend, inventory: Any,
                 drain: Callable[[str], Any], reasons: list[str],
                 reconcile_interval: float, transport: Any = None,
                 topic: str | None = None) -> None:
        self.backend = backend
        self.inventory = inventory
        self.endpoint = maintenance.ServiceUpdateEndpoint(
            drain, reasons, known=lambda h: h in inventory.hosts)
        self.reasons = reasons
        self.interval = reconcile_interval
        self.transport = transport
        self.topic = topic
        self._listener: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile(self) -> list[dict[str, Any]]:
        entries, _ = self.inventory.entries()
        return reconcile.reconcile(self.backend.ctxt(), entries, self.inventory.hosts,
                                   self.backend.ledger, self.backend.providers)

    def start(self) -> None:
        if self.transport is not None and self.reasons:
            self._listener = maintenance.listener(self.transport, self.endpoint,
                                                  topic=self.topic or
                                                  "versioned_notifications")
            self._listener.start()
            LOG.info("listening to Nova's %s for maintenance (%s)", self.topic,
                     ", ".join(self.reasons))
        if self.interval > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._periodic, daemon=True,
                                            name="ipmigrate-reconcile")
            self._thread.start()

    def _periodic(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                drift = self.reconcile()
                LOG.info("reconcile: %d mismatch(es)", len(drift))
            except Exception:  # noqa: BLE001 - the next pass tries again
                LOG.exception("reconcile failed")

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.stop()
            self._listener.wait()
            self._listener = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    @classmethod
    def from_conf(cls, conf: Any, inventory: Any, drain: Callable[[str], Any]) -> NovaSide:
        """Nova's configuration read (``[engine] nova_config_files``), its clients."""
        from nova import rpc as nova_rpc
        from nova.conf import CONF as NOVA_CONF

        init_nova(conf.engine.nova_config_files)
        topics = NOVA_CONF.notifications.versioned_notifications_topics
        return cls(NovaBackend.from_nova(), inventory, drain,
                   list(conf.engine.maintenance_reasons), conf.engine.reconcile_interval,
                   transport=nova_rpc.NOTIFICATION_TRANSPORT,
                   topic=topics[0] if topics else "versioned_notifications")
