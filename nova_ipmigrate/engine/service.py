"""The engine process: database, RPC server (threading executor) and worker."""

from __future__ import annotations

import logging
import socket
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg
from oslo_context import context as oslo_context

from nova_ipmigrate import rpc
from nova_ipmigrate.engine import TOPIC
from nova_ipmigrate.engine.db import Database
from nova_ipmigrate.engine.inventory import Inventory
from nova_ipmigrate.engine.manager import EngineManager
from nova_ipmigrate.engine.notifications import Notifications
from nova_ipmigrate.engine.worker import Worker

LOG = logging.getLogger(__name__)


class EngineService:
    """Everything of one engine; ``agents``: an AgentAPI (or a fake in tests)."""

    def __init__(self, conf: cfg.ConfigOpts, transport: messaging.Transport | None,
                 agents: Any, notifier: messaging.Notifier | None = None,
                 db: Database | None = None, host: str | None = None) -> None:
        e = conf.engine
        self.host = host or e.host or socket.gethostname()
        self.transport = transport
        self.db = db or Database(conf.database.connection, conf.database)
        self.ctxt = oslo_context.get_admin_context()
        self.inventory = Inventory(agents, e.hosts, self.ctxt)
        self.notifications = Notifications(notifier, self.host, e.progress_interval)
        #: the Nova side ([engine] backend = nova): Nova's clients, its maintenance
        #: notifications, the periodic reconcile
        self.nova: Any = None
        backend = None
        if e.backend == "nova":
            from nova_ipmigrate.accounting.service import NovaSide

            self.nova = NovaSide.from_conf(conf, self.inventory, self._drain)
            backend = self.nova.backend
        self.worker = Worker(self.db, agents, self.inventory, self.notifications,
                             max_ops_per_host=e.max_ops_per_host,
                             max_ops_per_link=e.max_ops_per_link,
                             poll_interval=e.poll_interval, workers=e.workers, ctxt=self.ctxt,
                             cleanup_timeout=e.cleanup_timeout, backend=backend)
        self.manager = EngineManager(self.db, self.inventory, self.notifications,
                                     wake=self.worker.wake, backend=backend,
                                     reconciler=self.nova.reconcile if self.nova else None)
        self.server: Any = None

    def start(self) -> None:
        self.db.check_synced()
        if self.transport is not None:
            target = messaging.Target(topic=TOPIC, server=self.host)
            self.server = rpc.get_server(target, [self.manager], transport=self.transport)
            self.server.start()
        self.worker.start()
        if self.nova is not None:
            self.nova.start()
        LOG.info("engine %s started", self.host)

    def _drain(self, host: str) -> Any:
        return self.manager.host_drain(self.ctxt, host=host)

    def stop(self) -> None:
        if self.nova is not None:
            self.nova.stop()
        if self.server is not None:
            self.server.stop()
            self.server.wait()
            self.server = None
        self.worker.stop()
        self.db.close()
        LOG.info("engine %s stopped", self.host)
