"""Initial schema: datasets, sweeps, jobs, epochs, and the job_summary view.

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 14:21:02.575792
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


# One row per job with its parameters and metrics, for SQL users (sqlite3, psql).
JOB_SUMMARY = """
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


def upgrade() -> None:
    op.create_table('datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('shape', sa.JSON(), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('nbytes', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    sa.UniqueConstraint('sha256', name=op.f('uq_datasets_sha256'))
    )
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('queue', sa.String(length=16), nullable=True),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('input', sa.String(length=300), nullable=False),
    sa.Column('kernel', sa.String(length=300), nullable=True),
    sa.Column('lr', sa.Float(), nullable=False),
    sa.Column('epochs', sa.Integer(), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('noise', sa.Float(), nullable=False),
    sa.Column('input_dataset_id', sa.Integer(), nullable=True),
    sa.Column('labels_dataset_id', sa.Integer(), nullable=True),
    sa.Column('kernel_dataset_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=True),
    sa.Column('worker_host', sa.String(length=200), nullable=True),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('task_try', sa.Integer(), nullable=False),
    sa.Column('torch_version', sa.String(length=40), nullable=True),
    sa.Column('train_seconds', sa.Float(), nullable=True),
    sa.Column('true_kernel', sa.JSON(), nullable=True),
    sa.Column('initial_kernel', sa.JSON(), nullable=True),
    sa.Column('learned_kernel', sa.JSON(), nullable=True),
    sa.Column('learned_bias', sa.JSON(), nullable=True),
    sa.Column('lstsq_kernel', sa.JSON(), nullable=True),
    sa.Column('err_frobenius', sa.Float(), nullable=True),
    sa.Column('err_relative', sa.Float(), nullable=True),
    sa.Column('err_max_abs', sa.Float(), nullable=True),
    sa.Column('err_cosine', sa.Float(), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=True),
    sa.Column('params', sa.Integer(), nullable=True),
    sa.Column('identifiable', sa.Boolean(), nullable=True),
    sa.Column('gap_optimization', sa.Float(), nullable=True),
    sa.Column('gap_noise', sa.Float(), nullable=True),
    sa.Column('gap_identifiability', sa.Float(), nullable=True),
    sa.Column('converged_epoch', sa.Integer(), nullable=True),
    sa.Column('diverged_epoch', sa.Integer(), nullable=True),
    sa.Column('epochs_done', sa.Integer(), nullable=False),
    sa.Column('final_loss', sa.Float(), nullable=True),
    sa.Column('final_mse', sa.Float(), nullable=True),
    sa.Column('explanation', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['input_dataset_id'], ['datasets.id'], name=op.f('fk_jobs_input_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['kernel_dataset_id'], ['datasets.id'], name=op.f('fk_jobs_kernel_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['labels_dataset_id'], ['datasets.id'], name=op.f('fk_jobs_labels_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], name=op.f('fk_jobs_sweep_id_sweeps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_err_relative'), ['err_relative'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_method'), ['method'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status'), ['status'], unique=False)
        batch_op.create_index('ix_jobs_sweep_id_status', ['sweep_id', 'status'], unique=False)

    op.create_table('epochs',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('loss', sa.Float(), nullable=True),
    sa.Column('mse', sa.Float(), nullable=True),
    sa.Column('kernel_error', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_epochs_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'epoch', name=op.f('pk_epochs'))
    )
    op.execute(JOB_SUMMARY)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS job_summary")
    op.drop_table('epochs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_sweep_id_status')
        batch_op.drop_index(batch_op.f('ix_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_jobs_method'))
        batch_op.drop_index(batch_op.f('ix_jobs_err_relative'))

    op.drop_table('jobs')
    op.drop_table('sweeps')
    op.drop_table('datasets')
