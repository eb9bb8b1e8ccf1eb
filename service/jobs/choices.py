"""The names a job's fields choose from: methods, devices and kernel presets.

Plain Python (no numpy, no pydantic), so that a command filtering by them (`klab list --method adam
--kernel sobel-x`) checks its values without loading what a job's spec and arrays need.
"""
from __future__ import annotations

from enum import StrEnum


class Method(StrEnum):
    D2L_MANUAL = "d2l-manual"
    D2L_SGD = "d2l-sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    LSTSQ = "lstsq"

    @property
    def is_minibatch(self) -> bool:
        return self in (Method.D2L_SGD, Method.MOMENTUM, Method.ADAM)


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"


NO_KERNEL = "none"
"""What --kernel takes for no true kernel (labels given with --labels), in any case."""


def means_no_kernel(text: str) -> bool:
    """Whether a --kernel text is NO_KERNEL (in any case, spaces around it ignored)."""
    return text.strip().lower() == NO_KERNEL


def kernel_key(kernel: str) -> str:
    """A --kernel text as jobs are told apart by it: a literal whatever its spaces (`[[1, -1]]` is `[[1,-1]]`), as
    `klab list --kernel` matches it and a sweep refuses it twice; no kernel in any case as NO_KERNEL (`none,None`
    was two jobs alike); any other text as it is."""
    if means_no_kernel(kernel):
        return NO_KERNEL
    return "".join(kernel.split()) if kernel.lstrip().startswith("[") else kernel


KERNEL_PRESETS: dict[str, list[list[float]]] = {
    "d2l": [[1.0, -1.0]],
    "edge-v": [[1.0], [-1.0]],
    "sobel-x": [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
    "sobel-y": [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]],
    "laplacian": [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
    "second-diff": [[1.0, -2.0, 1.0]],
    "box3": [[1 / 9] * 3] * 3,
    "gauss3": [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]],
    "sharpen": [[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]],
    "identity3": [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
}
"""The kernels --kernel knows by name."""
