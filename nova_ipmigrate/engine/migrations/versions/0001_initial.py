"""The operations table.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("vm", sa.String(255), nullable=True),
        sa.Column("path", sa.String(1024), nullable=True),
        sa.Column("main_host", sa.String(255), nullable=True),
        sa.Column("source_host", sa.String(255), nullable=True),
        sa.Column("dest_host", sa.String(255), nullable=True),
        sa.Column("strategy", sa.String(32), nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("agent_op_id", sa.String(255), nullable=True),
        sa.Column("request_id", sa.String(36), nullable=True),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("fault", sa.Text, nullable=True),
        sa.Column("parent_id", sa.String(36),
                  sa.ForeignKey("operations.id", name="fk_operations_parent_id"),
                  nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_operations_state", "operations", ["state"])
    op.create_index("ix_operations_vm", "operations", ["vm"])
    op.create_index("ix_operations_parent_id", "operations", ["parent_id"])
