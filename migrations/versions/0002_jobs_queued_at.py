"""jobs.queued_at: when a job was last handed to the broker, so that a worker can tell a job whose
message the broker lost from one still on its way.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 03:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends (SQLite 3.35+ drops columns): a batch copy of `jobs` would break
# the job_summary view, which names it.
def upgrade() -> None:
    op.add_column('jobs', sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True))
    # Jobs queued before this revision: their creation is the best lower bound of when they were sent.
    op.execute("UPDATE jobs SET queued_at = created_at WHERE status = 'queued'")


def downgrade() -> None:
    op.drop_column('jobs', 'queued_at')
