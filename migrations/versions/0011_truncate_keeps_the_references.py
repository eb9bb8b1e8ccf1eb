"""PostgreSQL: a TRUNCATE keeps what a DELETE keeps. The triggers of 0004 (a job's epochs go with it) and 0008 (a
sweep's jobs go with it) fire on DELETE only, and PostgreSQL's TRUNCATE fires no DELETE trigger: `TRUNCATE jobs`
left every epoch behind (the README's loss-curve query then read a deleted job's), and `TRUNCATE sweeps` left its
jobs naming sweeps that no longer existed; with RESTART IDENTITY, the next sweep took a truncated one's id and its
jobs with it (`klab delete --sweep` of that sweep deleted them). The foreign keys these triggers replaced refused
both TRUNCATEs; now `TRUNCATE jobs` empties epochs too, and `TRUNCATE sweeps` deletes the jobs of a sweep (and so
their epochs), as `DELETE FROM jobs` and `DELETE FROM sweeps` do. SQLite has no TRUNCATE.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 13:00:00
"""
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION klab_truncate_epochs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM epochs) THEN  -- empty when truncated by the same statement, which then holds it
        TRUNCATE epochs;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_truncate_epochs AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION klab_truncate_epochs();

CREATE FUNCTION klab_truncate_sweep_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM jobs WHERE sweep_id IS NOT NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER sweeps_truncate_jobs AFTER TRUNCATE ON sweeps
    FOR EACH STATEMENT EXECUTE FUNCTION klab_truncate_sweep_jobs();
"""

DOWNGRADE = """
DROP TRIGGER sweeps_truncate_jobs ON sweeps;
DROP FUNCTION klab_truncate_sweep_jobs();
DROP TRIGGER jobs_truncate_epochs ON jobs;
DROP FUNCTION klab_truncate_epochs();
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE)
