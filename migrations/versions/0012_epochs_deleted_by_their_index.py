"""PostgreSQL: the epochs of deleted jobs are found by epochs' primary key, not by reading the whole table. 0004's
trigger deleted them with `job_id IN (SELECT id FROM gone)`, which PostgreSQL joined by reading every epoch (a
hash join): a DELETE of one job took 0.41 s on 5,000,000 epochs, and `klab delete --sweep` of 300 jobs that had
none 40 s on 251,000,000 (while the deleted jobs' worker, waiting on their locked rows, trained on); as an array,
between the least and the greatest id (service.db.writes.ids_in), 11 ms and 1 ms.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 13:20:00
"""
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

BODY = """
CREATE OR REPLACE FUNCTION klab_delete_epochs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM epochs WHERE job_id {};
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BODY.format("BETWEEN (SELECT min(id) FROM gone) AND (SELECT max(id) FROM gone) "
                               "AND job_id = ANY(ARRAY(SELECT id FROM gone))"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BODY.format("IN (SELECT id FROM gone)"))
