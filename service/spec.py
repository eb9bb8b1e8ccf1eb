"""The job spec: one validated model, from CLI flags or a JSON/YAML file, and the problem it defines."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service import data, defaults
from service.errors import BadInput


class Method(str, Enum):
    D2L_MANUAL = "d2l-manual"
    D2L_SGD = "d2l-sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    LSTSQ = "lstsq"

    @property
    def is_minibatch(self) -> bool:
        return self in (Method.D2L_SGD, Method.MOMENTUM, Method.ADAM)


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"


class JobSpec(BaseModel):
    """A kernel-learning job, exactly as the user asked for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, validate_default=True)

    input: str = defaults.INPUT
    kernel: str | None = defaults.KERNEL
    labels: str | None = None
    bias: float | None = None
    noise: float = Field(default=0.0, ge=0.0)
    method: Method = Method(defaults.METHOD)
    lr: float = Field(default=defaults.LR, gt=0.0)
    epochs: int = Field(default=defaults.EPOCHS, gt=0)
    batch_size: int = Field(default=defaults.BATCH_SIZE, gt=0)
    seed: int = Field(default=defaults.SEED, ge=0, lt=2**63)
    tol: float = Field(default=defaults.TOL, ge=0.0)
    device: Device = Device.CPU

    @field_validator("input", "kernel", "labels", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            if isinstance(value, list):  # a YAML/JSON file may hold the kernel as a nested list
                try:
                    return json.dumps(value, allow_nan=False)
                except (TypeError, ValueError, RecursionError):
                    raise ValueError("must be a string or a nested list of numbers") from None
            raise ValueError("must be a string")
        return value.strip() if isinstance(value, str) else value

    @field_validator("lr", "bias", "noise", "tol")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("epochs")
    @classmethod
    def _epoch_limit(cls, value: int) -> int:
        if value > defaults.max_epochs():
            raise ValueError(f"{value} is more than the limit {defaults.max_epochs()} (KLAB_MAX_EPOCHS)")
        return value

    @model_validator(mode="after")
    def _kernel_or_labels(self) -> "JobSpec":
        if self.kernel is None and self.labels is None:
            raise ValueError("kernel: give a true kernel, or labels with --labels")
        return self

    @classmethod
    def parse(cls, values: dict[str, Any]) -> "JobSpec":
        """A spec from plain values, with any error turned into BadInput naming the field."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise bad_input_from(exc) from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def bad_input_from(exc: ValidationError) -> BadInput:
    """The first pydantic error as one BadInput line."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "spec"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    if field == "spec" and ":" in message:
        field, _, message = message.partition(": ")
    if err["type"] in ("enum",):
        got = err.get("input")
        message = f"unknown value {got!r}; {message[0].lower()}{message[1:]}"
    return BadInput(field.replace("_", "-"), message)


def load_spec_file(path: str) -> list[dict[str, Any]]:
    """Job values from a JSON, YAML or JSONL file (JSONL: one job a line)."""
    import yaml  # noqa: PLC0415 - only when a file is given

    field = "file"
    p = Path(path)
    if not p.is_file():
        raise BadInput(field, f"no such file: {path}")
    if p.stat().st_size > defaults.max_file_bytes():
        raise BadInput(field, f"{path} is larger than the limit {defaults.max_file_bytes()} bytes")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise BadInput(field, f"{path} is not a readable text file") from None
    try:
        if p.suffix == ".jsonl":
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
            if not docs:
                raise BadInput(field, f"{path} holds no jobs")
        elif p.suffix == ".json":
            docs = [json.loads(text)]
        else:
            docs = [yaml.safe_load(text)]
    except BadInput:
        raise
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise BadInput(field, f"{path} is not valid {p.suffix.lstrip('.') or 'YAML'}{where}") from None
    for doc in docs:
        if not isinstance(doc, dict):
            raise BadInput(field, f"{path} must hold a mapping of job fields")
    return [{k.replace("-", "_") if isinstance(k, str) else k: v for k, v in doc.items()} for doc in docs]


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
        x, input_ndim = data.parse_input(spec.input, spec.seed)
    kernel = None
    two_d = input_ndim == 2  # report kernels as 2-D only for a 2-D input and a 2-D kernel
    if spec.kernel is not None:
        kernel = arrays["kernel"] if "kernel" in arrays else data.parse_kernel(spec.kernel, spec.seed)
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
        labels = arrays["labels"] if "labels" in arrays else data.parse_labels(spec.labels)
        two_d = two_d and labels.ndim == 2
        labels = _labels_shape(labels, x, input_ndim)
        ho, wo = labels.shape[2:]
        if ho > h or wo > w:
            raise BadInput("labels", f"are {ho}x{wo}, larger than the {h}x{w} input")
        shape = (labels.shape[1], c, h - ho + 1, w - wo + 1)
        if kernel is not None and kernel.shape != shape:
            raise BadInput("labels", f"of shape {labels.shape[1:]} do not fit kernel {kernel.shape} on input {x.shape[1:]}")
        if shape[2] * shape[3] * c * shape[0] > defaults.max_kernel_elements():
            raise BadInput("labels", f"imply a {shape} kernel, more than the kernel limit")
        y = labels
        true_bias = spec.bias if kernel is not None else None
    else:
        assert kernel is not None
        shape = kernel.shape
        y = data.correlate(x, kernel)
        if spec.bias is not None:
            y = y + spec.bias
        true_bias = spec.bias
    if spec.noise > 0:
        y = y + spec.noise * data.rng(spec.seed, data.NOISE_STREAM).standard_normal(y.shape)
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



FILE_FIELDS = ("input", "kernel", "labels")


def problem_key(spec: JobSpec, datasets: tuple = ()) -> tuple:
    """What a spec's Problem depends on: specs with equal keys share one Problem (one build, one array)."""
    seeded = spec.noise > 0 or any(str(v).startswith("random:") for v in (spec.input, spec.kernel))
    return (spec.input, spec.kernel, spec.labels, spec.bias, spec.noise, spec.method.is_minibatch,
            spec.seed if seeded else None, datasets)


def file_arrays(spec: JobSpec) -> dict[str, np.ndarray]:
    """The arrays of fields that name files (npy:, image:), loaded as the user gave them, for upload."""
    out: dict[str, np.ndarray] = {}
    if spec.input.startswith(("npy:", "image:")):
        x, ndim = data.parse_input(spec.input, spec.seed)
        out["input"] = x.reshape(x.shape[4 - ndim:])
    if spec.kernel is not None and spec.kernel.startswith("npy:"):
        out["kernel"] = data.parse_kernel(spec.kernel, spec.seed)
    if spec.labels is not None:
        out["labels"] = data.parse_labels(spec.labels)
    return out
