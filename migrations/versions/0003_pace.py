"""The pace of a job: jobs.stable_lr, convergence_rate and more_epochs, and job_summary with them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 04:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# The view as service.jobs.result.summary_view_sql() wrote it at this revision.
JOB_SUMMARY = """
CREATE VIEW job_summary AS
SELECT id, sweep_id, status, queue, method, input, kernel, lr, epochs, batch_size, seed, noise, created_at,
       started_at, finished_at, worker_host, error_message, device, train_seconds, epochs_done, final_loss,
       final_mse, err_frobenius AS frobenius_error, err_relative AS relative_error,
       err_max_abs AS max_abs_error, err_cosine AS cosine, rank, params, identifiable, gap_optimization,
       gap_noise, gap_identifiability, converged_epoch, diverged_epoch, stable_lr, convergence_rate, more_epochs
FROM jobs
"""

# The view of revision 0001, to go back to.
JOB_SUMMARY_0001 = """
CREATE VIEW job_summary AS
SELECT j.id, j.sweep_id, j.status, j.queue, j.method, j.input, j.kernel, j.lr, j.epochs,
       j.batch_size, j.seed, j.noise, j.epochs_done, j.final_loss, j.final_mse,
       j.err_frobenius AS frobenius_error, j.err_relative AS relative_error,
       j.err_max_abs AS max_abs_error, j.err_cosine AS cosine, j.rank, j.params, j.identifiable,
       j.gap_optimization, j.gap_noise, j.gap_identifiability, j.converged_epoch, j.diverged_epoch,
       j.device, j.worker_host, j.train_seconds, j.created_at, j.started_at, j.finished_at,
       j.error_message
FROM jobs j
"""

COLUMNS = (('stable_lr', sa.Float()), ('convergence_rate', sa.Float()), ('more_epochs', sa.Integer()))


# Plain ALTER TABLE on both backends (SQLite 3.35+ drops columns): a batch copy of `jobs` would break
# the job_summary view, which names it; the view is dropped first all the same, since it changes.
def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS job_summary")
    for name, type_ in COLUMNS:
        op.add_column('jobs', sa.Column(name, type_, nullable=True))
    op.execute(JOB_SUMMARY)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS job_summary")
    for name, _ in reversed(COLUMNS):
        op.drop_column('jobs', name)
    op.execute(JOB_SUMMARY_0001)
