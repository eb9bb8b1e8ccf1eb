"""PostgreSQL: jobs.sweep_id is checked once per statement, not once per row. The foreign key checked each
new job against sweeps as it was copied in: a third of the time PostgreSQL took to store a sweep's job rows
(100,000 rows: 1.23 s with it, 0.79 s without, measured here on PostgreSQL 15 with binary COPY).

Triggers keep what the key kept. After an INSERT or a COPY, one statement locks the sweeps the new rows name
(FOR KEY SHARE, as the key's check does, so that no one deletes them until this transaction ends) and fails
with foreign_key_violation if one is missing. A row whose sweep_id an UPDATE changes is checked the same
way, row by row (no code does that). Deleting sweeps deletes their jobs (the key's ON DELETE CASCADE, and
0004's trigger then deletes their epochs), and a sweep's id cannot change while jobs name it. SQLite keeps
its key: it checks a row in a fraction of the time, and dropping a key there rebuilds the table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:00:00
"""
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE jobs DROP CONSTRAINT fk_jobs_sweep_id_sweeps;

CREATE FUNCTION klab_missing_sweep(missing integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
        MESSAGE = 'insert or update on table "jobs" violates the reference of jobs.sweep_id to sweeps',
        DETAIL = format('Key (sweep_id)=(%s) is not present in table "sweeps".', missing);
END $$;

CREATE FUNCTION klab_jobs_sweeps_exist() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE missing integer;
BEGIN
    PERFORM 1 FROM sweeps WHERE id IN (SELECT DISTINCT sweep_id FROM added) FOR KEY SHARE;
    SELECT a.sweep_id INTO missing FROM (SELECT DISTINCT sweep_id FROM added WHERE sweep_id IS NOT NULL) a
        WHERE NOT EXISTS (SELECT 1 FROM sweeps s WHERE s.id = a.sweep_id) LIMIT 1;
    IF FOUND THEN
        PERFORM klab_missing_sweep(missing);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_sweeps_exist AFTER INSERT ON jobs REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION klab_jobs_sweeps_exist();

CREATE FUNCTION klab_new_sweep_id_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE missing integer := NEW.sweep_id;
BEGIN
    PERFORM 1 FROM sweeps WHERE id = missing FOR KEY SHARE;
    IF NOT FOUND THEN
        PERFORM klab_missing_sweep(missing);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_sweep_id_changed AFTER UPDATE OF sweep_id ON jobs FOR EACH ROW
    WHEN (NEW.sweep_id IS NOT NULL AND NEW.sweep_id IS DISTINCT FROM OLD.sweep_id)
    EXECUTE FUNCTION klab_new_sweep_id_exists();

CREATE FUNCTION klab_delete_sweep_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM jobs WHERE sweep_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE TRIGGER sweeps_delete_jobs AFTER DELETE ON sweeps REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION klab_delete_sweep_jobs();

CREATE FUNCTION klab_sweep_id_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM jobs WHERE sweep_id = OLD.id) THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
            MESSAGE = 'update on table "sweeps" violates the reference of jobs.sweep_id to sweeps',
            DETAIL = format('Key (id)=(%s) is still referenced from table "jobs".', OLD.id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER sweeps_id_kept AFTER UPDATE OF id ON sweeps FOR EACH ROW WHEN (NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION klab_sweep_id_kept();
"""

DOWNGRADE = """
DROP TRIGGER sweeps_id_kept ON sweeps;
DROP FUNCTION klab_sweep_id_kept();
DROP TRIGGER sweeps_delete_jobs ON sweeps;
DROP FUNCTION klab_delete_sweep_jobs();
DROP TRIGGER jobs_sweep_id_changed ON jobs;
DROP FUNCTION klab_new_sweep_id_exists();
DROP TRIGGER jobs_sweeps_exist ON jobs;
DROP FUNCTION klab_jobs_sweeps_exist();
DROP FUNCTION klab_missing_sweep(integer);
ALTER TABLE jobs ADD CONSTRAINT fk_jobs_sweep_id_sweeps FOREIGN KEY (sweep_id) REFERENCES sweeps (id)
    ON DELETE CASCADE;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE)
