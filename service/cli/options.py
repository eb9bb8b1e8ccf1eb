"""Options shared by commands: the job flags of `klab run`, `submit` and `sweep` (raw strings, validated by
JobSpec), and the jobs a command acts on (ids or a sweep)."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from service.errors import BadInput
from service.jobs.selection import Selection

JOB_FIELDS = ("input", "kernel", "labels", "bias", "noise", "method", "lr", "epochs", "batch_size",
              "seed", "tol", "device")

_HELP = {
    "input": "edge:HxW, ones:HxW, random:HxW|CxHxW|NxCxHxW, checker:HxW, diagonal:HxW, image:PATH[:rgb], npy:PATH "
             "[default: edge:6x8]",
    "kernel": "true kernel: a preset (d2l, edge-v, sobel-x, sobel-y, laplacian, second-diff, box3, gauss3, "
              "sharpen, identity3), a JSON literal, random:KHxKW|COxCIxKHxKW, npy:PATH, or none (with --labels: no "
              "true kernel) [default: d2l]",
    "labels": "npy:PATH: labels given instead of computed from the kernel (with --kernel none if there is no "
              "true kernel to compare with)",
    "bias": "a true bias (adds a bias to the convolution) [default: none]",
    "noise": "standard deviation of Gaussian label noise [default: 0]",
    "method": "d2l-manual, d2l-sgd, momentum, adam or lstsq [default: d2l-manual]",
    "lr": "learning rate [default: 0.03]",
    "epochs": "epochs [default: 10]",
    "batch_size": "minibatch size for d2l-sgd, momentum and adam [default: 2]",
    "seed": "seed of the initial weights and of random input, kernel and noise [default: 0]",
    "tol": "converged when mse is within this of the least-squares optimum [default: 1e-4]",
    "device": "cpu, cuda or auto [default: cpu]",
}


def job_options(file: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds every job flag (as a string, None when not given) and -f FILE, which holds `file` (its help)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(JOB_FIELDS):
            flag = "--" + name.replace("_", "-")
            func = click.option(flag, name, default=None, metavar="TEXT", help=_HELP[name])(func)
        return click.option("-f", "--file", "spec_file", default=None, metavar="FILE",
                            help=f"{file} (flags given override it)")(func)

    return decorate


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The job flags the user actually gave."""
    return {k: v for k, v in values.items() if k in JOB_FIELDS and v is not None}


def selected(ids: str = "many", optional: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds the jobs a command acts on, and hands it `selection` (service.jobs.selection.Selection).

    ids: "many" for ID... arguments, "one" for an optional [ID], "option" for ID... arguments and --ids 1,2,3
    as well (export's first spelling); and --sweep S. `optional`: neither means every job.
    """
    field = "ids" if ids == "option" else "id"

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(*args: Any, job_ids: Any = None, listed: str | None = None, sweep: int | None = None,
                    **kwargs: Any) -> Any:
            given = [job_ids] if ids == "one" and job_ids is not None else list(job_ids or ())
            if listed is not None:
                given += _id_list(listed)
            return func(*args, selection=Selection.of(given, sweep, field, optional), **kwargs)

        command = sweep_option("every job of this sweep")(command)
        if ids == "option":
            command = click.option("--ids", "listed", default=None, metavar="1,2,3", help="these jobs")(command)
        if ids == "one":
            return click.argument("job_ids", metavar="[ID]", type=WHOLE, required=False)(command)
        return click.argument("job_ids", metavar="[ID]...", nargs=-1, type=WHOLE)(command)

    return decorate


def sweep_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--sweep S, once (given again, `klab delete --sweep 1 --sweep 2` would have deleted sweep 2 alone: refused, as
    every option of one value given twice is, by service.cli.OnceCommand)."""
    return click.option("--sweep", type=WHOLE, default=None, help=help)


class _Ascii:
    """A number as every other number klab reads: ASCII digits (Python's int() and float() read any script's, and
    `--limit ٢` was 2 where `--epochs ١٠` and KLAB_MAX_EPOCHS=١٠ are refused)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.isascii():
            self.fail(f"{value!r} is not a number of ASCII digits", param, ctx)  # type: ignore[attr-defined]
        return super().convert(value, param, ctx)  # type: ignore[misc]


class WholeNumber(_Ascii, click.types.IntParamType):
    """click's integer, in ASCII digits."""


class WholeRange(_Ascii, click.IntRange):
    """click's IntRange, in ASCII digits."""


class NumberRange(_Ascii, click.FloatRange):
    """click's FloatRange, in ASCII digits."""


WHOLE = WholeNumber()


def _id_list(raw: str | None) -> list[int]:
    """--ids 1,2,3 as numbers."""
    if raw is None:
        return []
    parts = raw.replace(" ", "").split(",")
    if not any(parts):
        raise BadInput("ids", "give at least one job id")
    try:
        if not raw.isascii():
            raise ValueError(raw)
        return [int(p) for p in parts]  # an empty item too is refused: `1,,2` is a typo, maybe of 1,12
    except ValueError:
        raise BadInput("ids", f"must be job ids separated by commas, got {raw!r}") from None


def spec_docs(spec_file: str | None, one: str | None = None) -> list[dict[str, Any]]:
    """The jobs of -f FILE (JSON, YAML or JSONL), or one empty job; `one`: why the file must hold one."""
    from service.jobs.spec import load_spec_file

    docs = load_spec_file(spec_file) if spec_file is not None else [{}]  # a JSONL file's jobs within the limit
    if one and len(docs) != 1:
        raise BadInput("file", f"{spec_file} holds {len(docs)} jobs; {one}")
    return docs


def specs_from(values: dict[str, Any], spec_file: str | None, one: str | None = None) -> list:
    """Validated specs from -f FILE and the flags given, which win over the file."""
    from service.jobs.spec import JobSpec

    docs = spec_docs(spec_file, one)
    flags = given(values)
    if len(docs) > 1:
        JobSpec.check_fields(flags)  # a bad flag is named as itself, not as the first job of the file's
    specs = []
    for n, doc in enumerate(docs, 1):
        try:
            specs.append(JobSpec.parse({**doc, **flags}))
        except BadInput as exc:
            if len(docs) > 1:
                raise BadInput(exc.field, f"{exc.message} (job {n} of {spec_file})") from None
            raise
    return specs
