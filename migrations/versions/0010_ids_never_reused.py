"""id_floors: the greatest job and sweep id a SQLite database ever gave, so that it never gives one twice.

SQLite gave a new job the greatest id plus one (service.db.ids), which after `klab delete` of the newest jobs
was a deleted job's: a worker still training the deleted job took the new one for it, and stored its results
in it, or cancelled it (a task checks that its jobs are still its own by id, status and attempts, which a new job
can match). PostgreSQL's sequences never give an id twice; its rows here stay unused. Each table's floor
starts at its greatest id now (the ids of jobs deleted before this revision are not known).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 00:30:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'id_floors',
        sa.Column('name', sa.String(length=16), nullable=False),
        sa.Column('last_id', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_id_floors')),
    )
    op.execute("INSERT INTO id_floors (name, last_id) SELECT 'jobs', coalesce(max(id), 0) FROM jobs")
    op.execute("INSERT INTO id_floors (name, last_id) SELECT 'sweeps', coalesce(max(id), 0) FROM sweeps")


def downgrade() -> None:
    op.drop_table('id_floors')
