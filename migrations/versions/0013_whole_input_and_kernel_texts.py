"""jobs.input and jobs.kernel hold the whole text given. They were cut to 300 characters, so two kernel literals
alike in their first 300 (a 2x3x3x3 kernel is written in about 460) were one kernel to `klab compare --group-by
kernel`, `klab list --kernel` and job_summary, and the column held a text that was no JSON (an npy path past 300
characters the same). On PostgreSQL both columns become text (the view, which names them, made again); SQLite never
enforced the length it declares. The texts cut are restored from each job's spec.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 15:10:00
"""
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

# The view as service.jobs.result.summary_view_sql() wrote it at this revision (as at 0003).
JOB_SUMMARY = """
CREATE VIEW job_summary AS
SELECT id, sweep_id, status, queue, method, input, kernel, lr, epochs, batch_size, seed, noise, created_at,
       started_at, finished_at, worker_host, error_message, device, train_seconds, epochs_done, final_loss,
       final_mse, err_frobenius AS frobenius_error, err_relative AS relative_error,
       err_max_abs AS max_abs_error, err_cosine AS cosine, rank, params, identifiable, gap_optimization,
       gap_noise, gap_identifiability, converged_epoch, diverged_epoch, stable_lr, convergence_rate, more_epochs
FROM jobs
"""

CUT = 300
"""The length both columns were cut to."""

COLUMNS = ("input", "kernel")


def _retype(kind: str) -> None:
    op.execute("DROP VIEW job_summary")
    op.execute("ALTER TABLE jobs " + ", ".join(f"ALTER COLUMN {c} TYPE {kind}" for c in COLUMNS))
    op.execute(JOB_SUMMARY)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        _retype("text")  # from varchar(300): no row is rewritten
    for c in COLUMNS:  # a text of exactly CUT characters may have been cut: its spec holds it whole
        whole = f"spec->>'{c}'" if postgresql else f"json_extract(spec, '$.{c}')"
        op.execute(f"UPDATE jobs SET {c} = {whole} WHERE length({c}) = {CUT} AND length({whole}) > {CUT}")  # noqa: S608


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for c in COLUMNS:
        op.execute(f"UPDATE jobs SET {c} = substr({c}, 1, {CUT}) WHERE length({c}) > {CUT}")  # noqa: S608
    if postgresql:
        _retype(f"varchar({CUT})")
