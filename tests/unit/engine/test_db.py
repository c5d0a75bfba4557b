"""The engine database: migrations match the models, optimistic updates, FIFO order."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from nova_ipmigrate.engine import db as dbm
from nova_ipmigrate.engine import models


def test_migrations_produce_the_models_schema(tmp_path: Path) -> None:
    d = dbm.Database(f"sqlite:///{tmp_path}/e.sqlite")
    d.sync()
    with d.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": True})
        assert compare_metadata(ctx, models.Base.metadata) == []
        tables = set(sa.inspect(conn).get_table_names())
    assert tables == {"operations", "alembic_version"}
    assert d.current_revision() == d.head_revision() == "0001"
    d.sync()            # idempotent
    d.check_synced()
    d.close()


def test_unsynced_database_is_refused(tmp_path: Path) -> None:
    d = dbm.Database(f"sqlite:///{tmp_path}/sub/e.sqlite")
    with pytest.raises(dbm.NotSynced, match="db sync"):
        d.check_synced()
    d.close()


def test_optimistic_update(tmp_path: Path) -> None:
    d = dbm.Database(f"sqlite:///{tmp_path}/e.sqlite")
    d.sync()
    op = d.create(kind="split", vm="v", params={"a": 1})
    assert op.request_id == op.id and op.state == "queued" and op.version == 1
    new = d.update(op, state="running", step="starting")
    assert new.version == 2 and new.state == "running"
    with pytest.raises(dbm.StaleOperation):
        d.update(op, state="done")
    assert d.get(op.id).state == "running"  # type: ignore[union-attr]
    d.close()


def test_fifo_order_and_filters(tmp_path: Path) -> None:
    d = dbm.Database(f"sqlite:///{tmp_path}/e.sqlite")
    d.sync()
    ids = [d.create(kind="partial_migration", vm=f"v{i % 2}").id for i in range(6)]
    assert [o.id for o in d.list()] == ids
    assert [o.id for o in d.list(vm="v1")] == ids[1::2]
    parent = d.create(kind="host_drain")
    (child,) = d.create_many([{"kind": "partial_migration", "parent_id": parent.id}],
                             update=(parent, {"step": "waiting"}))
    assert [o.id for o in d.list(parent_id=parent.id)] == [child.id]
    assert d.get(parent.id).step == "waiting"  # type: ignore[union-attr]
    d.close()


def test_create_many_is_atomic(tmp_path: Path) -> None:
    d = dbm.Database(f"sqlite:///{tmp_path}/e.sqlite")
    d.sync()
    parent = d.create(kind="host_drain")
    d.update(parent, step="planning")
    with pytest.raises(dbm.StaleOperation):
        d.create_many([{"kind": "partial_migration", "parent_id": parent.id}],
                      update=(parent, {"step": "waiting"}))
    assert d.list(parent_id=parent.id) == []
    d.close()
