"""What `klab list` and `klab.jobs(...)` filter jobs by, checked as a job's own values are and said in SQL alike:
a method or a kernel that no job could have is refused (not answered with no jobs), and a kernel literal matches
whatever spaces it was written with."""
from __future__ import annotations

from typing import Any

from service.errors import BadInput
from service.jobs.choices import KERNEL_PRESETS, NO_KERNEL, Method, kernel_key, means_no_kernel

LITERAL_KERNEL = "kernel LIKE :literal AND replace(kernel, ' ', '') = :kernel"
"""A job given the literal :kernel (spaces left out), whatever spaces either had (the column holds it whole since
0013). `LIKE '[%'` (:literal; kernels are stored stripped) lets PostgreSQL count the literals: a rare one is found
by a parallel scan, not by walking every job (0.61 s, not 1.24: bench/RESULTS.md)."""

KERNEL = "kernel = :kernel AND length(kernel) = :kernel_length"
"""A job given :kernel (a preset, random:..., npy:PATH). The length, implied by the equality, is for PostgreSQL
without statistics: it took any kernel for one job in 200 and walked every job newest first (1.07 s on 1,000,000
jobs for a rare one); one in 40,000 it scans them in parallel (0.57 s). With statistics a common kernel is still
found among the newest jobs (0.18 s)."""


def known(method: str | None, kernel: str | None) -> tuple[str | None, str | None]:
    """Filter values checked as a job's own would be (an unknown one is refused, not answered `no jobs`): a
    method or a kernel preset by name, other kernels by the parser that reads a job's (it loads numpy)."""
    kernel = kernel.strip() if kernel is not None else None  # as a job's spec keeps it (` sobel-x` found none)
    if method is not None and method not in set(Method):
        raise BadInput("method", f"unknown method {method!r}; choose from {', '.join(Method)}")
    if kernel is not None and means_no_kernel(kernel):  # as a job's spec reads it
        return method, NO_KERNEL
    # npy:PATH is not read: the file may be gone, its jobs are not
    if kernel is not None and kernel not in KERNEL_PRESETS and not kernel.startswith("npy:"):
        from service.jobs.inputs import parse_kernel

        parse_kernel(kernel, 0)
    return method, kernel


def kernel_is(kernel: str) -> tuple[str, dict[str, Any]]:
    """SQL (and its parameters) for the jobs given this true kernel (as `known` left it; NO_KERNEL: none)."""
    if kernel == NO_KERNEL:  # the jobs given labels and no true kernel
        return "kernel IS NULL", {}
    if kernel.lstrip().startswith("["):
        return LITERAL_KERNEL, {"kernel": kernel_key(kernel), "literal": "[%"}
    kept = kernel_key(kernel)  # `random:02x2` as `random:2x2`, as a job keeps it
    return KERNEL, {"kernel": kept, "kernel_length": len(kept)}
