"""database_identity: one row naming this database, so that its jobs' messages go to queues of its own.

Messages carry job ids only, and ids repeat across databases: a worker of another database sharing the
broker would otherwise take this database's messages and find no such job, or the wrong one. Each
database gets a random identity here; its queues on the broker are `cpu.<identity>` and
`gpu.<identity>` (service.broker.routed), and its workers consume those alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 05:00:00
"""
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        'database_identity',
        sa.Column('identity', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('identity', name=op.f('pk_database_identity')),
    )
    op.bulk_insert(table, [{"identity": uuid.uuid4().hex[:12], "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table('database_identity')
