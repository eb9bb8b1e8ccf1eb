"""The job flags shared by `klab run`, `submit` and `sweep`: raw strings, validated by JobSpec."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

JOB_FIELDS = ("input", "kernel", "labels", "bias", "noise", "method", "lr", "epochs", "batch_size",
              "seed", "tol", "device")

_HELP = {
    "input": "edge:HxW, ones:HxW, random:HxW|CxHxW, checker:HxW, diagonal:HxW, image:PATH[:rgb], npy:PATH "
             "[default: edge:6x8]",
    "kernel": "true kernel: a preset (d2l, edge-v, sobel-x, sobel-y, laplacian, second-diff, box3, gauss3, "
              "sharpen, identity3), a JSON literal, random:KHxKW|COxCIxKHxKW or npy:PATH [default: d2l]",
    "labels": "npy:PATH: labels given instead of computed from the kernel",
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


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Adds every job flag (as a string, None when not given) and -f FILE."""
    for name in reversed(JOB_FIELDS):
        flag = "--" + name.replace("_", "-")
        func = click.option(flag, name, default=None, metavar="TEXT", help=_HELP[name])(func)
    return click.option("-f", "--file", "spec_file", default=None, metavar="FILE",
                        help="a job in JSON or YAML (flags given override it)")(func)


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The job flags the user actually gave."""
    return {k: v for k, v in values.items() if k in JOB_FIELDS and v is not None}
