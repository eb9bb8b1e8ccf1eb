"""Which jobs a command acts on: job ids, or a whole sweep, never both."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from service.errors import BadInput


def distinct(ids: Iterable[int]) -> tuple[int, ...]:
    """Job ids as a user gave them, in order, once each (`klab status 5 5`, a DataFrame's job_id column)."""
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class Selection:
    ids: tuple[int, ...] = ()
    sweep: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", distinct(self.ids))  # a read counts each once (ids twice: "no job ")

    @classmethod
    def of(cls, ids: Iterable[int] | None, sweep: int | None, field: str = "id", optional: bool = False
           ) -> Selection:
        """Ids or a sweep, as a user gave them; `optional`: neither means every job."""
        ids = distinct(ids or ())
        if ids and sweep is not None:
            raise BadInput(field, "give job ids or --sweep, not both")
        if not ids and sweep is None and not optional:
            raise BadInput(field, "give job ids or --sweep")
        return cls(ids, sweep)

    @property
    def everything(self) -> bool:
        return not self.ids and self.sweep is None

    def __str__(self) -> str:
        """As a user would give it again on the command line."""
        if self.sweep is not None:
            return f"--sweep {self.sweep}"
        return " ".join(map(str, self.ids))
