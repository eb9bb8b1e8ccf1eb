"""sweeps.tags: the labels a user gave a sweep (`klab sweep --tag T`, repeatable), a JSON list; `klab list
--tag T` and `klab sweeps --tag T` select by them. Sweeps stored before have none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 06:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends (SQLite 3.35+ drops columns), as in 0003.
def upgrade() -> None:
    op.add_column('sweeps', sa.Column('tags', sa.JSON(), server_default=sa.text("'[]'"), nullable=False))


def downgrade() -> None:
    op.drop_column('sweeps', 'tags')
