"""The problem a spec defines: input, labels and true kernel as arrays in canonical shapes, and which
jobs can train together."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import BadInput
from service.jobs import inputs
from service.jobs.spec import JobSpec
from service.settings import settings


@dataclass(frozen=True)
class Problem:
    """The arrays a spec defines, in canonical shapes, ready for the engine."""

    x: np.ndarray  # float32 N x C x H x W, samples on the first axis
    y: np.ndarray  # float32 N x C_out x Ho x Wo
    true_kernel: np.ndarray | None  # float64 C_out x C_in x kh x kw
    kernel_shape: tuple[int, int, int, int]
    true_bias: float | None
    has_bias: bool
    single_channel: bool  # report kernels as 2-D


def build_problem(spec: JobSpec, arrays: dict[str, np.ndarray] | None = None) -> Problem:
    """Materialize a spec: load or generate input, kernel and labels, check that they fit together.

    `arrays` may hold already-loaded arrays for "input", "kernel" and "labels" (from stored datasets).
    """
    arrays = arrays or {}
    if "input" in arrays:
        x = np.ascontiguousarray(arrays["input"], dtype=np.float32)
        input_ndim = x.ndim
        while x.ndim < 4:
            x = x[None]
    else:
        x, input_ndim = inputs.parse_input(spec.input, spec.seed)
    kernel = None
    two_d = input_ndim == 2  # report kernels as 2-D only for a 2-D input and a 2-D kernel
    if spec.kernel is not None:
        kernel = arrays["kernel"] if "kernel" in arrays else inputs.parse_kernel(spec.kernel, spec.seed)
        two_d = two_d and kernel.ndim == 2
        while kernel.ndim < 4:
            kernel = kernel[None]
    n, c, h, w = x.shape

    if kernel is not None:
        co, ci, kh, kw = kernel.shape
        if ci != c:
            raise BadInput("kernel", f"has {ci} input channel(s) but the input has {c}")
        if kh > h or kw > w:
            raise BadInput("kernel", f"is {kh}x{kw}, larger than the {h}x{w} input")
    if spec.labels is not None:
        labels = arrays["labels"] if "labels" in arrays else inputs.parse_labels(spec.labels)
        two_d = two_d and labels.ndim == 2
        labels = _labels_shape(labels, x, input_ndim)
        ho, wo = labels.shape[2:]
        if ho > h or wo > w:
            raise BadInput("labels", f"are {ho}x{wo}, larger than the {h}x{w} input")
        shape = (labels.shape[1], c, h - ho + 1, w - wo + 1)
        if kernel is not None and kernel.shape != shape:
            raise BadInput("labels", f"of shape {labels.shape[1:]} do not fit kernel {kernel.shape} "
                                     f"on input {x.shape[1:]}")
        if shape[2] * shape[3] * c * shape[0] > settings().max_kernel_elements:
            raise BadInput("labels", f"imply a {shape} kernel, more than the kernel limit")
        y = labels
        true_bias = spec.bias if kernel is not None else None
    elif kernel is None:  # JobSpec refuses this already; a stored spec is checked again
        raise BadInput("kernel", "give a true kernel, or labels with --labels")
    else:
        shape = kernel.shape
        y = inputs.correlate(x, kernel)
        if spec.bias is not None:
            y = y + spec.bias
        true_bias = spec.bias
    if spec.noise > 0:
        y = y + spec.noise * inputs.rng(spec.seed, inputs.NOISE_STREAM).standard_normal(y.shape)
    if not np.all(np.isfinite(y)) or np.abs(y).max() > np.finfo(np.float32).max:
        raise BadInput("labels" if spec.labels else "kernel", "the labels overflow: values too large for float32")

    if spec.method.is_minibatch and input_ndim == 2 and shape[2] == 1:
        # The seed cuts a 2-D H x W image into H one-row samples: X.view(H, 1, 1, W).
        x = x.reshape(h, 1, 1, w)
        y = y.reshape(h, y.shape[1], 1, y.shape[3])
    return Problem(
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=np.ascontiguousarray(y, dtype=np.float32),
        true_kernel=kernel,
        kernel_shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        true_bias=true_bias,
        has_bias=spec.bias is not None,
        single_channel=two_d,
    )


def _labels_shape(labels: np.ndarray, x: np.ndarray, input_ndim: int) -> np.ndarray:
    n = x.shape[0]
    if labels.ndim == 2:
        if n != 1:
            raise BadInput("labels", f"are 2-D but the input has {n} samples")
        return labels[None, None]
    if labels.ndim == 3:
        if n != 1:
            raise BadInput("labels", f"are 3-D but the input has {n} samples")
        return labels[None]
    if labels.shape[0] != n:
        raise BadInput("labels", f"have {labels.shape[0]} samples but the input has {n}")
    return labels




def seeded(spec: JobSpec) -> bool:
    """Whether a spec's arrays depend on its seed (random input, kernel or noise)."""
    return spec.noise > 0 or any(str(v).startswith("random:") for v in (spec.input, spec.kernel))


def problem_key(spec: JobSpec, datasets: tuple = ()) -> tuple:
    """What a spec's Problem depends on: specs with equal keys share one Problem (one build, one array)."""
    return (spec.input, spec.kernel, spec.labels, spec.bias, spec.noise, spec.method.is_minibatch,
            spec.seed if seeded(spec) else None, datasets)


def file_arrays(spec: JobSpec) -> dict[str, np.ndarray]:
    """The arrays of fields that name files (npy:, image:), loaded as the user gave them, for upload."""
    out: dict[str, np.ndarray] = {}
    if spec.input.startswith(("npy:", "image:")):
        x, ndim = inputs.parse_input(spec.input, spec.seed)
        out["input"] = x.reshape(x.shape[4 - ndim:])
    if spec.kernel is not None and spec.kernel.startswith("npy:"):
        out["kernel"] = inputs.parse_kernel(spec.kernel, spec.seed)
    if spec.labels is not None:
        out["labels"] = inputs.parse_labels(spec.labels)
    return out


def shapes(p: Problem) -> tuple:
    """What the arrays of jobs that train in one batch must share."""
    return (p.x.shape, p.y.shape, p.kernel_shape, p.has_bias)


def together(p: Problem, spec: JobSpec) -> tuple[Any, ...]:
    """Jobs with equal keys can train together, in one batch: the same shapes, method, epochs, batch
    size and device."""
    return (*shapes(p), spec.method.value, spec.epochs, spec.batch_size, spec.device.value)
