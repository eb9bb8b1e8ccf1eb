"""`Result`: one job's result, the object `klab show --json` prints, with numpy kernels, a DataFrame of its
epochs, a figure, and a rich display in a notebook."""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from klab.errors import public
from service.jobs import result as schema
from service.jobs.status import JobStatus

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure


class Result:
    """One job's result. Any other key of `klab show --json` (pace, converged_epoch, learned_bias, device...)
    reads as an attribute too; `data` is the whole object."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def id(self) -> int | None:
        """The job's id; None for a job trained with store=False."""
        return self.data.get("id")

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.data["status"])

    @property
    def spec(self) -> dict[str, Any]:
        return self.data.get("spec") or {}

    @property
    def true_kernel(self) -> np.ndarray | None:
        return _array(self.data.get("true_kernel"))

    @property
    def initial_kernel(self) -> np.ndarray | None:
        return _array(self.data.get("initial_kernel"))

    @property
    def learned_kernel(self) -> np.ndarray | None:
        return _array(self.data.get("learned_kernel"))

    @property
    def lstsq_kernel(self) -> np.ndarray | None:
        return _array(self.data.get("lstsq_kernel"))

    @property
    def error(self) -> dict[str, float] | None:
        """frobenius, relative, max_abs and cosine: learned against true."""
        return self.data.get("error")

    @property
    def gap(self) -> dict[str, float] | None:
        """The gap between learned and true kernel in three parts: optimization, noise, identifiability."""
        return self.data.get("gap")

    @property
    def identifiability(self) -> dict[str, Any] | None:
        """rank, params and identifiable: whether the input determines every weight."""
        return self.data.get("identifiability")

    @property
    def explanation(self) -> str | None:
        """The sentence that names the part of the gap that dominates."""
        return self.data.get("explanation")

    @cached_property
    def epochs(self) -> pd.DataFrame:
        """One row per epoch: epoch, loss, mse, kernel_error."""
        import pandas as pd

        names = [n for n in schema.EPOCH_NAMES if n != "job_id"]
        return typed_epochs(pd.DataFrame(self.data.get("epochs") or [], columns=names))

    @public
    def plot(self) -> Figure:
        """The loss curve and the kernels, as `klab plot ID` draws them (a job without epochs: klab.BadInput)."""
        from klab.figure import job_figure
        from service.render.axes import drawable

        return job_figure(drawable(self.data))

    def _repr_html_(self) -> str:
        from klab.html import result_html

        return result_html(self.data)

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("data") or {}
        if name in data:
            return data[name]
        raise AttributeError(f"Result has no attribute {name!r}")

    def __repr__(self) -> str:
        from service.render.text import settled

        relative = settled((self.error or {}).get("relative"), 1.0)  # 0 under float32 rounding, as `klab show`
        shown = "" if relative is None else f", relative_error={relative:.4g}"
        return f"Result(id={self.id}, status={self.status.value!r}{shown})"


def typed_epochs(frame: pd.DataFrame) -> pd.DataFrame:
    """Epochs with their columns' own types, a value never measured NaN: a job without a true kernel has no kernel
    error, which pandas kept as a column of None (object); an empty frame's columns are numbers too."""
    kinds = {f.name: float if f.kind == "float" else "int64" for f in schema.EPOCH if f.name in frame.columns}
    return frame.astype(kinds)


def _array(value: Any) -> np.ndarray | None:
    import numpy as np

    return None if value is None else np.asarray(value, dtype=np.float64)
