"""A result as text: the one renderer behind `klab show`, `klab run` (stored or not) and `submit --wait`.

Plain Python, no numpy: `klab show` starts fast. Names, groups and meanings come from the result
schema (service.jobs.result).
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Sequence
from typing import IO, Any

from service.errors import visible
from service.jobs import result as schema
from service.jobs.status import JobStatus, in_order

SPARK = "▁▂▃▄▅▆▇█"

FLOAT32_EPS = 2.0 ** -23
"""The spacing of float32 numbers near 1. Kernels train in float32, so two kernels whose distance is below
FLOAT32_EPS times the kernel's norm differ by less than the rounding of their own weights: a gap or an error
that small (the float64 analysis leaves 1e-16 behind, float32 labels 1e-8) is reported as 0."""

IGNORED_BY = {"d2l-manual": ("batch_size",), "lstsq": ("lr", "epochs", "batch_size")}
"""Spec fields a method never reads (the book's first loop takes the whole input at once; least squares
solves in one step), left out of the spec line."""


def shared(rows: Sequence[dict[str, Any]], keys: Sequence[str], differ: Sequence[str]) -> tuple[list[str], list[str]]:
    """Of `keys` (the parameters of several jobs' rows or specs, `differ` those whose values differ), those to name
    for each job: `differ`, and those alike that some jobs' methods read and others' never do; and those every job
    shares, alike and read by every job's method (said once). What no job's method reads is in neither, even where
    its stored values differ (lstsq jobs' lr and epochs)."""
    read = {k: [k not in IGNORED_BY.get(r.get("method"), ()) for r in rows] for k in keys}
    each = [k for k in keys if any(read[k]) and (k in differ or not all(read[k]))]
    return each, [k for k in keys if k not in each and all(read[k])]


def cell(value: Any) -> str:
    """One value as tables and reports show it: 4 significant digits, yes/no, '-' for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return visible(str(value))  # a path holding a newline or an escape sequence, as it is written in Python


def counted(by_status: dict[str, int]) -> str:
    """Jobs counted by status, in the order a job lives through them (JobStatus's): `2 queued, 8 succeeded,
    1 failed`."""
    return ", ".join(f"{by_status[s]} {s}" for s in in_order(by_status))


def moment(iso: str) -> str:
    """A stored time (ISO 8601 text in UTC, as reads give it) as people read it: to the second, without the
    offset (`2026-12-04 22:56:49`)."""
    return iso[:19].replace("T", " ")


def sparkline(values: list[float | None], width: int = 60) -> str:
    """The loss curve on a log scale, one character an epoch (sampled down to width)."""
    vals = [math.nan if v is None else float(v) for v in values]
    if not vals:
        return ""
    if len(vals) > width:  # evenly spaced samples, first and last included (as numpy.linspace rounds them)
        step = (len(vals) - 1) / (width - 1)
        vals = [vals[round(i * step)] for i in range(width - 1)] + [vals[-1]]
    logs = [math.log10(max(v, 1e-30)) if not math.isnan(v) else math.nan for v in vals]
    ok = [v for v in logs if math.isfinite(v)]
    if not ok:
        return "?" * len(vals)
    lo, hi = min(ok), max(ok)
    span = hi - lo or 1.0
    return "".join(SPARK[int((v - lo) / span * (len(SPARK) - 1))] if math.isfinite(v) else "?" for v in logs)


def _number(v: Any) -> float:
    return math.nan if v is None else float(v)


def grid(kernel: Any) -> list[list[float]]:
    """A kernel as rows of numbers: 4-D kernels are laid out one (out, in) slice under another."""
    if kernel and isinstance(kernel[0], list) and kernel[0] and isinstance(kernel[0][0], list):
        return [row for out in kernel for plane in out for row in grid(plane)]
    return [[_number(v) for v in row] for row in kernel]


def slices(kernel: Any) -> list[tuple[str | None, list[list[float]]]]:
    """A kernel's 2-D slices as rows of numbers, each named by its output and input channel (a 2-D kernel is one
    slice, unnamed)."""
    if kernel and isinstance(kernel[0], list) and kernel[0] and isinstance(kernel[0][0], list):
        return [(f"out {o}, in {i}", grid(plane)) for o, out in enumerate(kernel) for i, plane in enumerate(out)]
    return [(None, grid(kernel))]


def weight(v: float) -> str:
    """A weight as kernels show it: four decimals, never -0.0000; from 1e5 on (a diverged job's), four figures
    and an exponent."""
    if not math.isfinite(v):
        return f"{v:>8}"
    return f"{round(v, 4) + 0.0:8.4f}" if abs(v) < 1e5 else f"{v:.3e}"


def norm(kernel: Any) -> float:
    """A kernel's Frobenius norm (0 for none)."""
    return math.sqrt(sum(v * v for row in grid(kernel) for v in row if math.isfinite(v))) if kernel else 0.0


def settled(value: Any, scale: float) -> Any:
    """A distance between kernels of this norm, 0 when it is below their float32 rounding (FLOAT32_EPS)."""
    if isinstance(value, float) and math.isfinite(value) and abs(value) < FLOAT32_EPS * scale:
        return 0.0
    return value


DISTANCES: dict[str, bool] = {"frobenius_error": True, "max_abs_error": True, "relative_error": False,
                              **{name: True for name in schema.group("gap")}}
"""The result's distances between kernels, each with whether it is in the kernels' own units (settled at
their norm, `kernel_scale`) or a fraction of the true kernel's norm (settled at 1)."""

KERNELS = ("true_kernel", "learned_kernel")
"""What a row needs besides its distances for `settle` to know their scale."""


def kernel_scale(result: dict[str, Any]) -> float:
    """The norm a result's distances are measured against: the larger of the true kernel's and the learned one's
    (float32 rounds weights at their own size: a diverged job's weights of 1e30 leave 1e15 in its gaps)."""
    return max(norm(result.get("true_kernel")), norm(result.get("learned_kernel")))


def factor(value: float, digits: int = 4) -> str:
    """A convergence rate to `digits` significant digits, or to as many more as keep one under 1 from reading 1
    (a rate of 1 or more never closes): 0.99999998 with 4 digits is 0.99999998, not 1."""
    text = f"{value:.{digits}g}"
    while value < 1 and float(text) >= 1 and digits < 17:
        digits += 1
        text = f"{value:.{digits}g}"
    return text


def shown_value(name: str, value: Any, scale: float) -> Any:
    """A result field's value as text shows it: a distance (DISTANCES) settled at the kernels' norm `scale`
    or at 1; a convergence rate under 1, or a cosine between -1 and 1, never as 1 (`factor`); any other field as it
    is."""
    if name == "convergence_rate" and isinstance(value, float) and math.isfinite(value):
        return factor(value)
    if name == "cosine" and isinstance(value, float) and -1 < value < 1:  # 0.99998 read 1: aligned exactly
        if 1 - abs(value) < FLOAT32_EPS ** 2 / 2:  # an angle under the weights' float32 rounding: aligned, as the
            return math.copysign(1.0, value)  # distances' 0 beside it says (an exact fit read 0.9999999999999998)
        return factor(value) if value >= 0 else "-" + factor(-value)
    if name not in DISTANCES:
        return value
    return settled(value, scale if DISTANCES[name] else 1.0)


def settle(row: dict[str, Any]) -> dict[str, Any]:
    """A flat row (a job's summary) with its distances as text shows them: 0 below float32 rounding. The
    kernels (KERNELS) in the row give the scale; without them only the relative error is settled."""
    scale = kernel_scale(row)
    return {**row, **{name: shown_value(name, row[name], scale) for name in DISTANCES if name in row}}


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"


def side_by_side(named: list[tuple[str, Any]], width: int | None = None) -> str:
    """Kernels next to each other under their names; on a terminal (or within `width`) as many a row as fit it, the
    rest below (a 3x3 kernel's three took 90 columns, and an 80-column terminal folded every line into the next)."""
    room = width if width is not None else shutil.get_terminal_size().columns if is_terminal() else None
    made: list[tuple[str, list[tuple[str | None, str]]]] = []  # a kernel's name, its lines: (a slice's label, text)
    for name, kernel in named:
        if kernel is None:
            continue
        parts = [(label, [[weight(v) for v in row] for row in rows]) for label, rows in slices(kernel)]
        wide = max((len(c) for _, rows in parts for row in rows for c in row), default=0)  # past 999.9999 too
        lines: list[tuple[str | None, str]] = []
        for label, rows in parts:  # a 4-D kernel's slices, named in the column of a row's first kernel
            if label is not None:
                lines.append((label, ""))
            lines += [(None, "  ".join(c.rjust(wide) for c in row)) for row in rows]
        made.append((name, lines))
    if not made:
        return "(no kernels: the job did not train)"

    def block(name: str, lines: list[tuple[str | None, str]], first: bool) -> list[str]:
        texts = [label if label is not None and first else text for label, text in lines]
        width = max(len(name), *(len(t) for t in texts))
        return [name.ljust(width)] + [t.ljust(width) for t in texts]

    rows: list[list[list[str]]] = [[]]
    for name, lines in made:
        b = block(name, lines, not rows[-1])
        if rows[-1] and room is not None and sum(len(r[0]) + 3 for r in rows[-1]) + len(b[0]) > room:
            rows.append([])
            b = block(name, lines, True)
        rows[-1].append(b)
    return "\n\n".join(_beside(row) for row in rows)


def _beside(blocks: list[list[str]]) -> str:
    height = max(len(b) for b in blocks)
    for b in blocks:
        b.extend([" " * len(b[0])] * (height - len(b)))
    return "\n".join("   ".join(parts).rstrip() for parts in zip(*blocks))


def _minus(a: Any, b: Any) -> Any:
    if isinstance(a, list):
        return [_minus(x, y) for x, y in zip(a, b, strict=True)]
    return _number(a) - _number(b)


def difference(result: dict[str, Any]) -> Any:
    if result.get("true_kernel") is None or result.get("learned_kernel") is None:
        return None
    return _minus(result["learned_kernel"], result["true_kernel"])


def _group(name: str) -> list[schema.Field]:
    return [schema.BY_NAME[n] for n in schema.group(name)]


def heading(result: dict[str, Any]) -> tuple[str, str]:
    """A result's first two lines, as `klab show` and a notebook show them: the job, its status and sweep; and its
    spec, less what its method never reads."""
    spec = result.get("spec") or {}
    head = f"job {result['id']}: {result['status']}" if result.get("id") is not None else \
        f"{result['status']} (not stored)"
    if result.get("sweep_id") is not None:
        head += f" (sweep {result['sweep_id']})"
    ignored = IGNORED_BY.get(spec.get("method") or result.get("method"), ())
    return head, ", ".join(f"{k.replace('_', ' ')} {cell(v)}" for k, v in spec.items() if k not in ignored)


def bias_line(result: dict[str, Any]) -> str | None:
    """The learned bias (a value an output channel) beside the true one, as the kernels print; None without one.
    With labels given and no true kernel, --bias only lets a bias be learned: there is no true one."""
    bias = result.get("learned_bias")
    if bias is None:
        return None
    true_bias = (result.get("spec") or {}).get("bias") if result.get("true_kernel") is not None else None
    learned = "  ".join(weight(_number(b)).strip() for b in (bias if isinstance(bias, list) else [bias]))
    true = f"  (true {weight(float(true_bias)).strip()})" if true_bias is not None else ""
    return f"learned bias: {learned}{true}"


def render(result: dict[str, Any]) -> str:
    """A result as `klab show` prints it (a result never stored has no id, host or timestamps)."""
    head, spec_line = heading(result)
    lines = [head, f"spec: {spec_line}"]
    ran = [f"on {result['device']}" if result.get("device") else None,
           f"torch {result['torch_version']}" if result.get("torch_version") else None,
           f"{result['train_seconds']:.3g} s" if result.get("train_seconds") is not None else None,
           f"by {visible(result['worker_host'])}" if result.get("worker_host") else None,
           f"created {moment(result['created_at'])} UTC" if result.get("created_at") else None,
           f"finished {moment(result['finished_at'])} UTC" if result.get("finished_at") else None]
    lines.append("ran: " + ", ".join(r for r in ran if r))
    losses = [e["loss"] for e in result.get("epochs") or []]
    if losses:
        lines.append(f"loss {cell(losses[0])} -> {cell(losses[-1])} over {len(losses)} "
                     f"epoch{'s' if len(losses) != 1 else ''}  {sparkline(losses)}")
    true = result.get("true_kernel")
    if true is None and result.get("status") == JobStatus.RUNNING.value:  # stored when it ends: made from its
        from service.render.kernels import true_kernel  # spec, as its plot draws it (show printed none); numpy for it

        true = true_kernel(result)
    kernels = [("true", true), ("learned", result.get("learned_kernel")), ("difference", difference(result))]
    if any(k is not None for _, k in kernels):
        lines += ["", side_by_side(kernels), ""]
    if (line := bias_line(result)) is not None:
        lines.append(line)
    lines += group_line(result, "error")
    if (line := identifiable_line(result)) is not None:
        lines.append(line)
    marks = [f"converged at epoch {result['converged_epoch']}" if result.get("converged_epoch") else None,
             f"diverged at epoch {result['diverged_epoch']}" if result.get("diverged_epoch") else None]
    if any(marks):
        lines.append("; ".join(m for m in marks if m))
    lines += group_line(result, "pace")
    parts = gap_parts(result)
    if parts:
        lines.append(f"{gap_title(result)}:")
        width = max(len(f.key or "") for f, _ in parts)
        for f, value in parts:
            lines.append(f"  {(f.key or '').ljust(width)}  {value:>10}  {f.doc}")
    if result.get("explanation"):
        lines.append(result["explanation"])
    if result.get("error_message"):
        lines.append(f"error message: {visible(result['error_message'])}")
    return "\n".join(lines)


def gap_title(result: dict[str, Any]) -> str:
    """What the gap's parts add up to: the distance to the true kernel, or with none (labels given, `--kernel
    none`) only its optimization part, the distance to the best kernel the data allow."""
    if result.get("true_kernel") is None:
        return "gap between learned kernel and the best the data allow (no true kernel)"
    return "gap between learned and true kernel, by part"


def gap_parts(result: dict[str, Any]) -> list[tuple[schema.Field, str]]:
    """The gap's parts that a result has, each with its value as text shows it (settled at the kernels' norm)."""
    gap, scale = result.get("gap") or {}, kernel_scale(result)
    return [(f, cell(shown_value(f.name, gap[f.key], scale))) for f in _group("gap") if gap.get(f.key) is not None]


def group_line(result: dict[str, Any], group: str) -> list[str]:
    """A result's group of fields (error, pace) on one line, each as `name value` (the errors by their key:
    `max abs`, the others as tables head them); its distances settled at the kernels' norm (shown_value)."""
    values = result.get(group)
    if not values:
        return []
    scale = kernel_scale(result)

    def name(f: schema.Field) -> str:
        return (f.key or f.name).replace("_", " ") if group == "error" else f.shown_as

    return [f"{group}: " + ", ".join(f"{name(f)} {cell(shown_value(f.name, values.get(f.key or f.name), scale))}"
                                     for f in _group(group))]


def identifiable_line(result: dict[str, Any]) -> str | None:
    """Whether the input determines every weight, with the rank; None for a result without one."""
    ident = result.get("identifiability")
    if not ident:
        return None
    return f"identifiable: {'yes' if ident['identifiable'] else 'no'} ({rank_words(result)})"


def rank_words(result: dict[str, Any]) -> str:
    """`rank 2 of 4 weights`: of one output channel's, which a 4-D kernel of several says (each is fitted on the
    same input, alone: they share the rank, and the analysis counts one)."""
    ident = result.get("identifiability") or {}
    kernel = result.get("learned_kernel") or result.get("true_kernel") or []
    depth, k = 0, kernel
    while isinstance(k, list) and k:
        depth, k = depth + 1, k[0]
    outputs = len(kernel) if depth == 4 else 1
    return f"rank {ident.get('rank')} of {ident.get('params')} weights{each_channel(outputs)}"


def each_channel(outputs: int) -> str:
    """What a rank of one output channel's weights adds for a kernel of several (rank_words, the sentence)."""
    return f" of each of its {outputs} output channels" if outputs > 1 else ""
