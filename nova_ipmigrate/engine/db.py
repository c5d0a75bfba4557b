"""The engine's database: connection, migrations (``db sync``) and the operation
queries, every update optimistic (checked against the row's version)."""

from __future__ import annotations

import builtins
import os
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session, sessionmaker

from nova_ipmigrate.engine.models import ACTIVE_STATES, Operation, utcnow

MIGRATIONS = "nova_ipmigrate.engine:migrations"


class StaleOperation(Exception):
    """The operation changed since it was read (another thread updated it)."""


class NotSynced(Exception):
    """The database schema is not at the current migration: run ``db sync``."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def create_engine(url: str, conf_db: Any = None) -> sa.Engine:
    """An engine for ``url``; ``conf_db``: the ``[database]`` options (pool sizes...)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        directory = os.path.dirname(url[len("sqlite:///"):])
        if directory:
            os.makedirs(directory, exist_ok=True)
    if conf_db is not None:
        from oslo_db.sqlalchemy import engines
        return engines.create_engine(
            url, sqlite_fk=True, max_pool_size=conf_db.max_pool_size,
            max_overflow=conf_db.max_overflow, pool_timeout=conf_db.pool_timeout,
            connection_recycle_time=conf_db.connection_recycle_time,
            connection_debug=conf_db.connection_debug, max_retries=conf_db.max_retries,
            retry_interval=conf_db.retry_interval,
            connection_parameters=conf_db.connection_parameters)
    return sa.create_engine(url)


class Database:
    def __init__(self, url: str, conf_db: Any = None) -> None:
        self.url = url
        self.engine = create_engine(url, conf_db)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------

    def sync(self, revision: str = "head") -> None:
        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    def check_synced(self) -> None:
        cur, head = self.current_revision(), self.head_revision()
        if cur != head:
            raise NotSynced(f"the engine database {self.engine.url!r} is at revision "
                            f"{cur}, not {head}: run 'ipmigrate-engine db sync'")

    # -- operations -------------------------------------------------------------------

    def session(self) -> Session:
        return self._session()

    def create(self, **values: Any) -> Operation:
        return self.create_many([values])[0]

    def create_many(self, rows: Iterable[dict[str, Any]],
                    update: tuple[Operation, dict[str, Any]] | None = None) -> list[Operation]:
        """Insert operations (and optionally update one, all in one transaction)."""
        out = []
        with self.session() as s, s.begin():
            if update is not None:
                self._update(s, update[0], update[1])
            for values in rows:
                now = utcnow()
                values = dict(values)
                values.setdefault("id", str(uuid.uuid4()))
                values.setdefault("request_id", values["id"])
                values.setdefault("state", "queued")
                values.setdefault("step", "queued")
                values.setdefault("params", {})
                values.setdefault("progress", {})
                op = Operation(created_at=now, updated_at=now, version=1, **values)
                s.add(op)
                out.append(op)
        return out

    def get(self, op_id: str) -> Operation | None:
        with self.session() as s:
            return s.get(Operation, op_id)

    def list(self, vm: str | None = None, states: Sequence[str] | None = None,
             parent_id: str | None = None, kinds: Sequence[str] | None = None
             ) -> list[Operation]:
        """Operations in creation (FIFO) order."""
        q = sa.select(Operation)
        if vm is not None:
            q = q.where(Operation.vm == vm)
        if states is not None:
            q = q.where(Operation.state.in_(list(states)))
        if parent_id is not None:
            q = q.where(Operation.parent_id == parent_id)
        if kinds is not None:
            q = q.where(Operation.kind.in_(list(kinds)))
        q = q.order_by(Operation.created_at, Operation.id)
        with self.session() as s:
            return list(s.scalars(q))

    def active(self) -> builtins.list[Operation]:
        return self.list(states=ACTIVE_STATES)

    def update(self, op: Operation, **values: Any) -> Operation:
        """Update ``op`` if nobody did since it was read; raise :class:`StaleOperation`."""
        with self.session() as s, s.begin():
            self._update(s, op, values)
        return self.get(op.id) or op

    def _update(self, s: Session, op: Operation, values: dict[str, Any]) -> None:
        values = dict(values, updated_at=utcnow(), version=op.version + 1)
        res = s.execute(sa.update(Operation)
                        .where(Operation.id == op.id, Operation.version == op.version)
                        .values(**values)
                        .execution_options(synchronize_session=False))
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleOperation(f"operation {op.id} changed since version {op.version}")
