"""The result schema: every stored field of a job and of an epoch, declared once.

Everything else derives from these declarations: the `jobs` and `epochs` tables (service.db.schema),
the job_summary view's columns, the SQL that reads jobs (service.db.reads), the keys of
`klab show --json` and `klab run --json`, the exports, table headers and the text a result is shown
as (service.render). Adding a metric is an entry here, the code that computes it, and one Alembic
revision (which adds the column and recreates the view with `summary_view_sql`).

A result travels flat, as a dict of field names to plain values (a *row*); `to_json` nests it the
way `--json` prints it. Nothing here imports numpy, SQLAlchemy or pydantic.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Where a field appears, besides the jobs table.
SUMMARY = "summary"
"""The job_summary view, `klab compare` and the exports."""
EXPORT = "export"
"""Job exports only (beyond the summary): where it ran, its kernels, its spec."""
RESULT = "result"
"""A result as `klab show --json` and `klab run --json` print it."""
STORED = "stored"
"""A result only once stored (`klab run --no-store` has no id, no timestamps...)."""


@dataclass(frozen=True)
class Field:
    name: str
    """Its name everywhere a user sees it: the view, --json, exports, SQL examples."""
    kind: str
    """int, bigint, float, bool, text, json or time."""
    doc: str
    """What it means, in one line."""
    column: str | None = None
    """Its column in the jobs table, where that differs from the name."""
    group: str | None = None
    """The object it sits in within a result's JSON (error, identifiability, gap)."""
    key: str | None = None
    """Its key within that object (default: the name)."""
    header: str | None = None
    """Its table header (default: the name with spaces)."""
    appears: frozenset[str] = frozenset()
    """Where it appears besides the jobs table: SUMMARY, EXPORT, RESULT, STORED."""
    nullable: bool = True
    length: int | None = None
    """Most characters of a text column (none: unbounded)."""
    index: bool = False
    references: str | None = None
    """A foreign key, as table.column (deleted with it when it is a sweep; on PostgreSQL, jobs.sweep_id's is kept by
    triggers: service.db.schema.BY_TRIGGERS)."""

    @property
    def col(self) -> str:
        return self.column or self.name

    @property
    def numeric(self) -> bool:
        """Whether its values are numbers (int, bigint or float)."""
        return self.kind in ("int", "bigint", "float")

    @property
    def shown_as(self) -> str:
        return self.header or self.name.replace("_", " ")


def _f(name: str, kind: str, doc: str, *where: str, **more: Any) -> Field:
    return Field(name, kind, doc, appears=frozenset(where), **more)


S, E, R, ST = SUMMARY, EXPORT, RESULT, STORED

IDENTITY: tuple[Field, ...] = (
    _f("id", "int", "The job's number.", S, R, ST, nullable=False),
    _f("sweep_id", "int", "The sweep it belongs to, if any.", S, R, ST, header="sweep", references="sweeps.id",
       index=True),
    _f("status", "text", "created, queued, running, succeeded, diverged, failed or cancelled.", S, R,
       nullable=False, length=16),
    _f("queue", "text", "The broker queue it was sent to (cpu or gpu).", S, R, ST, length=16),
)

SPEC: tuple[Field, ...] = (
    # the spec's main knobs as columns, for filters, sorting and SQL
    _f("method", "text", "d2l-manual, d2l-sgd, momentum, adam or lstsq.", S, R, nullable=False, length=16,
       index=True),
    _f("input", "text", "The input as given (edge:6x8, npy:PATH, ...).", S, nullable=False),  # whole (0013)
    _f("kernel", "text", "The true kernel as given (d2l, a literal, ...).", S),
    _f("lr", "float", "Learning rate.", S, nullable=False),
    _f("epochs", "int", "Epochs asked for.", S, nullable=False),
    _f("batch_size", "int", "Minibatch size of d2l-sgd, momentum and adam.", S, nullable=False, header="batch"),
    _f("seed", "bigint", "Seed of the initial weights and of random input, kernel and noise.", S, R,
       nullable=False),
    _f("noise", "float", "Standard deviation of the label noise.", S, nullable=False),
    _f("spec", "json", "The whole spec, as submitted.", E, R, ST, nullable=False),
)
"""The fields a job takes from its spec when it is stored."""

LIFECYCLE: tuple[Field, ...] = (
    _f("input_dataset_id", "int", "The uploaded input array.", references="datasets.id"),
    _f("labels_dataset_id", "int", "The uploaded labels array.", references="datasets.id"),
    _f("kernel_dataset_id", "int", "The uploaded kernel array.", references="datasets.id"),
    _f("created_at", "time", "When it was stored.", S, R, ST, nullable=False),
    _f("started_at", "time", "When a worker last claimed it (a quick task, which claims none: began training it).",
       S, R, ST),
    _f("finished_at", "time", "When it ended.", S, R, ST),
    _f("heartbeat_at", "time", "The last renewal of its worker's lease."),
    _f("queued_at", "time", "When it was last handed to the broker."),
    _f("attempts", "int", "How many times a worker claimed it (a quick task's training counts as one).",
       nullable=False),
    _f("cancel_requested", "bool", "Whether `klab cancel` asked it to stop.", nullable=False),
    _f("worker_host", "text", "The worker that trained it.", S, R, ST, length=200),
    _f("task_id", "text", "The Celery task that claimed it.", length=64),
    _f("task_try", "int", "Which try of that task claimed it.", nullable=False),
    _f("error_message", "text", "Why it failed.", S, R, ST),
)

TRAINED: tuple[Field, ...] = (
    _f("device", "text", "Where it trained: cpu, cuda or cuda:N.", S, R, length=16),
    _f("torch_version", "text", "The torch that trained it.", E, R, length=40),
    _f("train_seconds", "float", "Its share of its batch's training time.", S, R),
    _f("epochs_done", "int", "Epochs trained (fewer than asked when it stopped early).", S, R, nullable=False,
       header="done"),
    _f("final_loss", "float", "The loss of its last epoch, as the book prints it.", S),
    _f("final_mse", "float", "The mean squared error after its last epoch.", S),
    _f("true_kernel", "json", "The kernel the labels were made with.", E, R),
    _f("initial_kernel", "json", "The weights training started from.", E, R),
    _f("learned_kernel", "json", "The weights training ended with.", E, R),
    _f("learned_bias", "json", "The learned bias, with --bias.", E, R),
    _f("lstsq_kernel", "json", "W* = pinv(A) y: the minimum-norm least-squares kernel.", E, R),
    _f("frobenius_error", "float", "||learned - true||.", S, R, column="err_frobenius", group="error",
       key="frobenius", header="frob. error"),
    _f("relative_error", "float", "||learned - true|| / ||true||.", S, R, column="err_relative", group="error",
       key="relative", header="rel. error", index=True),
    _f("max_abs_error", "float", "The largest |learned - true| of one weight.", S, R, column="err_max_abs",
       group="error", key="max_abs", header="max abs error"),
    _f("cosine", "float", "Cosine of the angle between learned and true.", S, R, column="err_cosine",
       group="error"),
    _f("rank", "int", "Rank of the design matrix A (im2col of the input).", S, R, group="identifiability"),
    _f("params", "int", "Weights of one output channel to learn (plus one with a bias); each channel has as many.",
       S, R, group="identifiability"),
    _f("identifiable", "bool", "Whether the input determines every weight (rank = params).", S, R,
       group="identifiability", header="ident."),
    _f("gap_optimization", "float", "||P W - W*||: learned vs the best kernel the data allow (train longer).",
       S, R, group="gap", key="optimization", header="gap opt."),
    _f("gap_noise", "float", "||W* - P K||: best kernel the data allow vs the true one (label noise).", S, R,
       group="gap", key="noise"),
    _f("gap_identifiability", "float", "||(I - P)(W - K)||: what this input cannot determine (a richer input "
       "would).", S, R, group="gap", key="identifiability", header="gap ident."),
    _f("converged_epoch", "int", "The epoch from which the mse stayed within --tol of the optimum's, to the last "
       "epoch run.", S, R, header="converged at"),
    _f("diverged_epoch", "int", "The epoch its loss became non-finite or grew past 10^6 times its first (d2l-manual: "
       "or its last update made it so).", S, R, header="diverged at"),
    _f("stable_lr", "float", "The largest learning rate at which this method's steps cannot grow the gap on "
       "this input (d2l-manual: 1 / lambda_max(A^T A)); none for adam and lstsq.", S, R, group="pace",
       header="stable lr"),
    _f("convergence_rate", "float", "The factor by which the slowest identifiable direction of the gap shrinks "
       "each epoch at this lr (1 or more: it never closes); none where no closed form holds.", S, R,
       group="pace", header="rate"),
    _f("more_epochs", "int", "About how many more epochs would bring its mse within --tol of the optimum's, "
       "at that rate.", S, R, group="pace", header="more epochs"),
    _f("explanation", "text", "Which part of the gap dominates, in one sentence.", E, R),
)
"""The fields training fills in: a result."""

JOB: tuple[Field, ...] = (*IDENTITY, *SPEC, *LIFECYCLE, *TRAINED)
"""Every column of the jobs table, in its order."""

EPOCH: tuple[Field, ...] = (
    _f("job_id", "int", "The job (no foreign key: see migration 0004; deleting a job deletes its epochs).",
       nullable=False),
    _f("epoch", "int", "1, 2, ...", nullable=False),
    _f("loss", "float", "What the book's loop prints for this method at this epoch."),
    _f("mse", "float", "Mean squared error over all data after this epoch's updates."),
    _f("kernel_error", "float", "||W - K|| after this epoch."),
)
"""Every column of the epochs table: one row per job and epoch."""

BY_NAME: dict[str, Field] = {f.name: f for f in JOB}

ROW = ("status", "error_message", *(f.name for f in TRAINED))
"""What a finished job's result row holds: what training filled in, and how it ended."""


def group(name: str) -> tuple[str, ...]:
    """The names of the fields of one group of a result (error, identifiability, gap, pace)."""
    return tuple(f.name for f in JOB if f.group == name)


def fields(where: str) -> tuple[Field, ...]:
    """The job fields that appear in `where` (SUMMARY, EXPORT, RESULT), in table order."""
    return tuple(f for f in JOB if where in f.appears)


def names(where: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(where))


SUMMARY_NAMES = names(SUMMARY)
"""The job_summary view's columns, which `klab compare` shows and exports start with."""
EXPORT_NAMES = SUMMARY_NAMES + tuple(f.name for f in JOB if EXPORT in f.appears and SUMMARY not in f.appears)
"""A job export's columns."""
RESULT_NAMES = names(RESULT)
"""A result's flat fields (a row), stored or not."""
EPOCH_NAMES = tuple(f.name for f in EPOCH)


def select_list(wanted: Iterable[str]) -> str:
    """SQL's select list for jobs columns under their names (`err_relative AS relative_error`)."""
    out = []
    for name in wanted:
        col = BY_NAME[name].col
        out.append(name if col == name else f"{col} AS {name}")
    return ", ".join(out)


def summary_view_sql() -> str:
    """The job_summary view as this schema defines it (each Alembic revision that changes it writes the
    SQL out, so that old revisions keep the view they made)."""
    return f"CREATE VIEW job_summary AS\nSELECT {select_list(SUMMARY_NAMES)}\nFROM jobs"


def columns_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's values keyed by jobs column."""
    return {BY_NAME[name].col: value for name, value in row.items()}


def to_json(row: Mapping[str, Any], epochs: list[dict[str, Any]] | None, stored: bool = True,
            spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A result as `--json` prints it: groups nested (null when all their fields are), epochs included.

    A result never stored (`stored=False`) takes the fields a stored job has from its spec from `spec`.
    """
    if spec is not None:
        row = {**{f.name: spec.get(f.name) for f in SPEC if f.name in spec}, **row}
    out: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {}
    for f in JOB:
        if RESULT not in f.appears or (STORED in f.appears and not stored):
            continue
        value = row.get(f.name)
        if f.group is None:
            out[f.name] = value
        else:
            grouped.setdefault(f.group, {})[f.key or f.name] = value
            out.setdefault(f.group, None)  # its place in the output
    for group, values in grouped.items():
        out[group] = values if any(v is not None for v in values.values()) else None
    out["epochs"] = epochs
    return out
