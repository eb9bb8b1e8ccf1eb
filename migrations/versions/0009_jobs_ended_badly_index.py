"""An index of the failed, diverged and cancelled jobs, keyed by id: `klab list --status failed` walked every job
ever run, newest first, looking for them (1.35 s on 1,000,000 succeeded jobs on PostgreSQL).

An index on status would serve it too, but a claim changes status, and 0004 keeps claims in-place (HOT) updates
by indexing nothing a claim changes (an index of the ended statuses, measured: no claim HOT any more, 5% to 48%
more claim time). So the index reads each end's mark instead (service.jobs.status.MARKS), which no claim changes:
a failed job says why (error_message), a diverged one when (diverged_epoch), a cancelled one was asked to stop
(cancel_requested). Jobs stored before this revision that lack their mark get one first: a job cancelled by
Ctrl-C in `klab sweep --local` had cancel_requested left false.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 09:30:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

ENDED_BADLY = 'error_message IS NOT NULL OR diverged_epoch IS NOT NULL OR cancel_requested'


def upgrade() -> None:
    op.execute("UPDATE jobs SET cancel_requested = true WHERE status = 'cancelled' AND NOT cancel_requested")
    op.execute("UPDATE jobs SET error_message = 'it failed before revision 0009, which found no reason stored' "
               "WHERE status = 'failed' AND error_message IS NULL")
    op.execute("UPDATE jobs SET diverged_epoch = epochs_done WHERE status = 'diverged' AND diverged_epoch IS NULL")
    where = sa.text(ENDED_BADLY)
    op.create_index('ix_jobs_ended_badly', 'jobs', ['id'], postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    op.drop_index('ix_jobs_ended_badly', table_name='jobs')
