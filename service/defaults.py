"""Every default and limit of kernel-lab, each a named constant; limits read env overrides."""
from __future__ import annotations

import os

METHOD = "d2l-manual"
"""The book's first loop."""

INPUT = "edge:6x8"
"""The book's image X."""

KERNEL = "d2l"
"""The book's true kernel [[1, -1]]."""

LR = 0.03
"""The book's learning rate."""

EPOCHS = 10
"""The book's number of steps in its first loop."""

BATCH_SIZE = 2
"""The book's DataLoader batch size."""

SEED = 0
"""Seed for the initial weights and for any random input, kernel or noise."""

TOL = 1e-4
"""An epoch has converged when its mse is within this of the least-squares optimum's mse."""

DIVERGENCE_FACTOR = 1e6
"""A loss that grows past this many times its first value has diverged."""

MOMENTUM = 0.9
"""Momentum of the `momentum` method (torch.optim.SGD)."""

ADAM_BETAS = (0.9, 0.999)
"""Betas of the `adam` method (torch.optim.Adam defaults)."""

ADAM_EPS = 1e-8
"""Epsilon of the `adam` method (torch.optim.Adam default)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"klab: error: {name}: must be an integer, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"klab: error: {name}: must be positive, got {value}")
    return value


def max_input_elements() -> int:
    """Most elements (N*C*H*W) an input may have; env KLAB_MAX_INPUT_ELEMENTS."""
    return _env_int("KLAB_MAX_INPUT_ELEMENTS", 16_777_216)


def max_kernel_elements() -> int:
    """Most weights (C_out*C_in*kh*kw) a kernel may have; env KLAB_MAX_KERNEL_ELEMENTS."""
    return _env_int("KLAB_MAX_KERNEL_ELEMENTS", 4096)


def max_epochs() -> int:
    """Most epochs a job may train; env KLAB_MAX_EPOCHS."""
    return _env_int("KLAB_MAX_EPOCHS", 100_000)


def max_file_bytes() -> int:
    """Largest file accepted for --input/--labels/--kernel; env KLAB_MAX_FILE_BYTES."""
    return _env_int("KLAB_MAX_FILE_BYTES", 256 * 1024 * 1024)


def max_sweep_jobs() -> int:
    """Most jobs one sweep or one submission may create; env KLAB_MAX_SWEEP_JOBS."""
    return _env_int("KLAB_MAX_SWEEP_JOBS", 200_000)


def max_job_seconds() -> int:
    """Soft time limit of one task, checked every epoch; env KLAB_MAX_JOB_SECONDS."""
    return _env_int("KLAB_MAX_JOB_SECONDS", 6 * 3600)


def visibility_timeout() -> int:
    """Seconds Redis keeps a message unacknowledged before redelivering it; env KLAB_VISIBILITY_TIMEOUT.

    A redelivered message whose jobs are still running (fresh heartbeat) is skipped, so this may be
    shorter than the longest job: it bounds how long a message held by a dead worker stays lost.
    """
    return _env_int("KLAB_VISIBILITY_TIMEOUT", 3600)


def lease_seconds() -> int:
    """A running job whose heartbeat is older than this is presumed orphaned; env KLAB_LEASE_SECONDS."""
    return _env_int("KLAB_LEASE_SECONDS", 60)


def max_attempts() -> int:
    """Times a job is started before a worker death is blamed on the job; env KLAB_MAX_ATTEMPTS."""
    return _env_int("KLAB_MAX_ATTEMPTS", 5)


def stranded_seconds() -> int:
    """A job queued this long while the broker holds no message for it is sent again; env KLAB_STRANDED_SECONDS.

    Longer than a task's longest retry wait (30 s), so a message on its way is never taken for lost.
    """
    return _env_int("KLAB_STRANDED_SECONDS", 60)


def reaper_seconds() -> float:
    """How often every worker looks for jobs of dead workers and for stranded queued jobs."""
    return max(0.5, min(lease_seconds(), stranded_seconds()) / 2)


def heartbeat_seconds() -> float:
    """How often a worker renews the lease of the jobs it trains: a fifth of the lease."""
    return max(0.2, lease_seconds() / 5)


BATCH_JOBS = 1024
"""Jobs one batch task trains together (klab sweep --batch-jobs)."""

FLUSH_SECONDS = 1.0
"""How often a long single job writes its new epochs and checks for cancellation."""
