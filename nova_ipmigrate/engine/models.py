"""The engine's database schema (SQLAlchemy 2.x); migrations in ``migrations/``."""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KINDS = ("split", "partial_migration", "reintegration", "host_drain",
         "main_host_migration")
STATES = ("queued", "running", "aborting", "done", "failed", "aborted")
FINAL_STATES = ("done", "failed", "aborted")
ACTIVE_STATES = ("queued", "running", "aborting")
#: kinds that move parts (the concurrency limits count them)
MOVES = ("partial_migration", "reintegration", "main_host_migration")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Operation(Base):
    __tablename__ = "operations"
    __table_args__ = (
        sa.Index("ix_operations_state", "state"),
        sa.Index("ix_operations_vm", "vm"),
        sa.Index("ix_operations_parent_id", "parent_id"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    #: step of the kind's state machine (queued, starting, running, planning, ...)
    step: Mapped[str] = mapped_column(sa.String(32), nullable=False)
    vm: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    path: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)
    main_host: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    source_host: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    dest_host: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    strategy: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False, default=dict)
    #: the agent's operation id (on main_host) once started
    agent_op_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    #: the id the agent deduplicates starts by (a repeated start returns the same op)
    request_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False, default=dict)
    fault: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    #: a host drain's child part moves point at the drain
    parent_id: Mapped[str | None] = mapped_column(
        sa.String(36), sa.ForeignKey("operations.id", name="fk_operations_parent_id"),
        nullable=True)
    created_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime, nullable=False,
                                                          default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime, nullable=False,
                                                          default=utcnow)
    started_at: Mapped[datetime.datetime | None] = mapped_column(sa.DateTime, nullable=True)
    finished_at: Mapped[datetime.datetime | None] = mapped_column(sa.DateTime, nullable=True)
    #: optimistic concurrency: every update checks and bumps it
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        def ts(v: datetime.datetime | None) -> str | None:
            return v.isoformat() + "Z" if v is not None else None
        return {"id": self.id, "kind": self.kind, "state": self.state, "step": self.step,
                "vm": self.vm, "path": self.path, "main_host": self.main_host,
                "source_host": self.source_host, "dest_host": self.dest_host,
                "strategy": self.strategy, "params": dict(self.params or {}),
                "agent_op_id": self.agent_op_id, "request_id": self.request_id,
                "progress": dict(self.progress or {}), "fault": self.fault,
                "parent_id": self.parent_id, "created_at": ts(self.created_at),
                "updated_at": ts(self.updated_at), "started_at": ts(self.started_at),
                "finished_at": ts(self.finished_at), "version": self.version}
