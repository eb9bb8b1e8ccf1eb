"""The names a job's fields choose from: methods, devices and kernel presets.

Plain Python (no numpy, no pydantic), so that a command filtering by them (`klab list --method adam
--kernel sobel-x`) checks its values without loading what a job's spec and arrays need.
"""
from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any


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


MADE = ("edge", "ones", "random", "checker", "diagonal")
"""The inputs klab makes from their dimensions (`edge:6x8`); `random:` makes kernels too."""
DIMS = re.compile(r"^[0-9]{1,300}(x[0-9]{1,300}){1,3}$")
"""Up to 300 digits a dimension (10**300 is past every limit, which then names its variable); more is no number."""


def made_text(text: str, kernel: bool = False) -> str:
    """A made input (or `random:` kernel) with its dimensions as the numbers they are: `edge:06x8` trained as
    `edge:6x8` and was another input to a sweep's duplicate check and `compare --group-by input`. Any other text,
    and dimensions the parser refuses (it names them as written), as it is."""
    kind, _, dims = text.partition(":")
    if kind not in (("random",) if kernel else MADE) or not DIMS.match(dims):
        return text
    numbers = [int(d) for d in dims.split("x")]
    counts = (2, 4) if kernel else (2, 3, 4) if kind == "random" else (2,)
    if len(numbers) not in counts or 0 in numbers:
        return text
    return f"{kind}:{'x'.join(map(str, numbers))}"


def input_text(text: str) -> str:
    """An --input text as a job keeps it: made dimensions by their numbers (made_text), and `image:PATH:gray`, the
    same as `image:PATH`, as that (a PATH itself ending in :rgb or :gray keeps the :gray that tells it apart)."""
    if text.startswith("image:") and text.endswith(":gray"):
        path = text[len("image:"):-len(":gray")]
        return text if path.endswith((":rgb", ":gray")) else f"image:{path}"
    return made_text(text)


def kernel_key(kernel: str) -> str:
    """A --kernel text as jobs are told apart by it: a literal by its numbers whatever their spelling and spaces
    (`[[1, -1]]`, `[[1.0,-1.0]]` and `[[1,-1e0]]` are one kernel: kernel_text), as `klab list --kernel` matches it
    and a sweep refuses it twice; no kernel in any case as NO_KERNEL (`none,None` was two jobs alike); any other
    text as it is."""
    if means_no_kernel(kernel):
        return NO_KERNEL
    return "".join(kernel_text(kernel).split()) if kernel.lstrip().startswith("[") else kernel_text(kernel)


def kernel_text(kernel: str) -> str:
    """A --kernel text as a job keeps it: a JSON literal written with each number as the float64 it trains with,
    in its shortest form (a whole one without .0), and `, ` between items: `[[1, 0.5e-1]]` typed and `[[1.0, 0.05]]`
    from a file were two kernels to `klab list --kernel` and `compare --group-by kernel`. Any other text, or a
    literal that does not parse or holds a number not finite (the parser names the mistake as written), as it is;
    `random:02x2` as `random:2x2` (made_text)."""
    if not kernel.lstrip().startswith("["):
        return made_text(kernel, kernel=True)
    try:
        return json.dumps(_numbers(json.loads(kernel)), allow_nan=False)
    except (ValueError, RecursionError, OverflowError):
        return kernel


def _numbers(value: Any) -> Any:
    """Each number of a nested list as the float64 it trains with, a whole one (exact as an int) as int."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    f = float(value)
    return int(f) if f.is_integer() and abs(f) < 1e16 else f


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
