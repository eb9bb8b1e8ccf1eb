"""The results schema: datasets, sweeps, jobs and their epochs (SQLite and PostgreSQL alike).

Epochs are keyed on (job_id, epoch), which serves both one job's history and one epoch across a
sweep (a lookup per job). A job row keeps its latest loss and epoch count, so listing jobs never
reads the epochs table.
"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer,
                        LargeBinary, MetaData, String, Text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobStatus(str, Enum):
    CREATED = "created"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DIVERGED = "diverged"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = {JobStatus.SUCCEEDED, JobStatus.DIVERGED, JobStatus.FAILED, JobStatus.CANCELLED}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Dataset(Base):
    """An uploaded array (input, labels or kernel), stored once per content hash."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(16))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sweep(Base):
    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.CREATED.value)
    queue: Mapped[str | None] = mapped_column(String(16))
    # the spec's main knobs as columns, for filters, sorting and SQL
    method: Mapped[str] = mapped_column(String(16), index=True)
    input: Mapped[str] = mapped_column(String(300))
    kernel: Mapped[str | None] = mapped_column(String(300))
    lr: Mapped[float] = mapped_column(Float)
    epochs: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    noise: Mapped[float] = mapped_column(Float)
    input_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    labels_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    kernel_dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # last handed to the broker
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    device: Mapped[str | None] = mapped_column(String(16))
    worker_host: Mapped[str | None] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(64))
    task_try: Mapped[int] = mapped_column(Integer, default=0)
    torch_version: Mapped[str | None] = mapped_column(String(40))
    train_seconds: Mapped[float | None] = mapped_column(Float)

    true_kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    initial_kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    learned_kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    learned_bias: Mapped[Any] = mapped_column(JSON, nullable=True)
    lstsq_kernel: Mapped[Any] = mapped_column(JSON, nullable=True)
    err_frobenius: Mapped[float | None] = mapped_column(Float)
    err_relative: Mapped[float | None] = mapped_column(Float, index=True)  # "best first" without a scan
    err_max_abs: Mapped[float | None] = mapped_column(Float)
    err_cosine: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[int | None] = mapped_column(Integer)
    identifiable: Mapped[bool | None] = mapped_column(Boolean)
    gap_optimization: Mapped[float | None] = mapped_column(Float)
    gap_noise: Mapped[float | None] = mapped_column(Float)
    gap_identifiability: Mapped[float | None] = mapped_column(Float)
    converged_epoch: Mapped[int | None] = mapped_column(Integer)
    diverged_epoch: Mapped[int | None] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    final_loss: Mapped[float | None] = mapped_column(Float)
    final_mse: Mapped[float | None] = mapped_column(Float)
    explanation: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_jobs_sweep_id_status", "sweep_id", "status"),)


class Epoch(Base):
    """One epoch of one job: the primary key (job_id, epoch) is also its only index."""

    __tablename__ = "epochs"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float)
    mse: Mapped[float | None] = mapped_column(Float)
    kernel_error: Mapped[float | None] = mapped_column(Float)
