"""Every default of kernel-lab, each a named constant. The environment can change the limits and the
service's timings; `service.settings` reads it, once."""
from __future__ import annotations

# --- a job, as the book runs it --------------------------------------------------------------------

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
"""A job has converged from the epoch its mse came within this of the least-squares optimum's mse to stay."""

DIVERGENCE_FACTOR = 1e6
"""A loss that grows past this many times its first value has diverged."""

MOMENTUM = 0.9
"""Momentum of the `momentum` method (torch.optim.SGD)."""

ADAM_BETAS = (0.9, 0.999)
"""Betas of the `adam` method (torch.optim.Adam defaults)."""

ADAM_EPS = 1e-8
"""Epsilon of the `adam` method (torch.optim.Adam default)."""

# --- limits (KLAB_MAX_*) ------------------------------------------------------------------------------

MAX_INPUT_ELEMENTS = 16_777_216
"""Most elements (N*C*H*W) an input may have."""

MAX_KERNEL_ELEMENTS = 4096
"""Most weights (C_out*C_in*kh*kw) a kernel may have."""

MAX_EPOCHS = 100_000
"""Most epochs a job may train."""

MAX_FILE_BYTES = 256 * 1024 * 1024
"""Largest file accepted for --input, --labels, --kernel or -f."""

MAX_SWEEP_JOBS = 200_000
"""Most jobs one sweep or one submission may create."""

MAX_JOB_SECONDS = 6 * 3600
"""A task still training after this many seconds fails (checked every epoch)."""

MAX_JOB_MEMORY = 2 * 2**30
"""Most bytes a job's arrays may take at once, as estimated when it is validated (service.jobs.problem.job_memory).

2 GiB is the memory per core of common machines (a 16 GiB machine of 8 cores; compute-optimized cloud
machines): a worker runs one child per core by default, so its children together stay within the machine."""

# --- the service ----------------------------------------------------------------------------------------

BROKER_URL = "redis://localhost:6379/0"
"""The Celery broker that `submit` publishes to and workers consume from."""

VISIBILITY_TIMEOUT = 3600
"""Seconds Redis keeps a taken message unacknowledged before it may hand it to another worker.

A redelivered message whose jobs are still running (fresh heartbeat) claims nothing, so this may be
shorter than the longest job: it bounds how long a message held by a dead worker stays away."""

LEASE_SECONDS = 60
"""A running job whose worker sent no heartbeat for this long is presumed orphaned and taken back."""

MAX_ATTEMPTS = 5
"""Times a job is started before a worker's death is blamed on the job, which then fails."""

STRANDED_SECONDS = 60
"""A job queued this long while the broker holds no message for it is sent again.

Longer than a task's longest wait between two tries of the database (RETRY_MAX_SECONDS): a task waiting for it
holds its message, unacknowledged, and one held longer than this is sent again (harmless: a job is claimed once)."""

RETRY_FIRST_SECONDS = 0.5
"""A task that cannot reach the database first waits this long, then twice as long each time, then tries again in
the same worker child (worker.tasks.train)."""

RETRY_MAX_SECONDS = 30.0
"""The longest wait between two tries of a task that cannot reach the database."""

BATCH_JOBS = 4096
"""Most compatible jobs one task trains together (klab submit/sweep --batch-jobs); fewer where that many would
not fit in KLAB_MAX_JOB_MEMORY together (service.jobs.problem.fitting). Each task costs a worker about 10 ms
besides its jobs (claim, commits, the engine's set-up): a 100,000-job sweep of the book's job took 9% less
time in tasks of 4,096 than of 1,024 (bench/RESULTS.md)."""

BATCH_JOBS_MOST = 100_000
"""The largest --batch-jobs (batch_jobs= from Python) taken."""

SUBMIT_CONNECTIONS = 4
"""Connections `klab sweep` and `klab submit` store a large submission's jobs over at once, on PostgreSQL (one
on SQLite, which takes one writer at a time). The database's own work on each new row (writing it and its
index entries) is most of a large submission's time, and several connections share it among the server's
cores: on 16 cores, 1,000,000 jobs stored in 16 to 20 s over 4 connections, 39 s over one; 8 did no better
(bench/RESULTS.md)."""

QUICK_WORK = 1e9
"""A task whose jobs all wait and take at most this much work to train (service.jobs.problem.work: about a second on
one core, the book's 4,096-job task 2.3e8) trains them without claiming them first (worker.tasks): it writes a job's
row once when it ends instead of twice. Jobs train unseen meanwhile: `status` shows them queued."""

FLUSH_SECONDS = 1.0
"""How often a training task checks for cancellation, and a long single job writes its new epochs."""

SQLITE_BUSY_MS = 30_000
"""How long SQLite waits for another process's lock before giving up."""

SQLITE_WRITE_WAIT_S = 600
"""How long a write transaction on SQLite waits for the write lock, SQLITE_TRY_MS at a time, before it fails
"database is locked" (service.db.connect.begin_writing)."""

SQLITE_TRY_MS = 1_000
"""How long one try of a write's BEGIN waits for SQLite's lock: between two, a fork of the process may go
(service.db.connect.ForkGuard.between)."""

CONNECT_TIMEOUT_S = 5
"""How long to wait for PostgreSQL or Redis to answer a connection."""

BROKER_SOCKET_TIMEOUT_S = 10
"""How long a worker or a publisher waits on the broker's socket for a reply (kombu's `socket_timeout`: None, for
ever, by default): a TLS handshake with a Redis that does not speak TLS (a rediss:// URL for a plain server), or
a broker gone without closing the connection, hung a worker that no SIGTERM stopped. Far above kombu's BRPOP
(1 s), which the broker answers within that even when no message waits."""

PRESENCE_SECONDS = 30
"""How long a worker's presence on a Redis broker lasts unless renewed (it renews it every third of that):
what `klab submit` reads to warn that no worker of this database consumes a queue."""

INT32_MOST = 2**31 - 1
"""The most a count may be: epochs and batch size (their columns are 32-bit integers: service.jobs.result), and any
number setting but times and sizes (service.settings), which a C int must hold too (torch's set_num_threads)."""
