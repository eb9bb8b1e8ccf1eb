"""Uploaded arrays (an input, labels or a kernel given as a file): stored once per content, by the sha256 of
their .npy bytes, and loaded without pickle."""
from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from service.db.connect import Reader
from service.db.schema import datasets, utcnow
from service.errors import BadInput

if TYPE_CHECKING:
    import numpy as np


def array_bytes(array: np.ndarray) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def put_dataset(conn: Connection, array: np.ndarray) -> int:
    """Store an array once per content (sha256 of its .npy bytes); returns its dataset id."""
    blob = array_bytes(array)
    digest = hashlib.sha256(blob).hexdigest()
    find = select(datasets.c.id).where(datasets.c.sha256 == digest)
    found = conn.execute(find).scalar()
    if found is not None:
        return found
    try:
        with conn.begin_nested():  # another client may store the same array at the same moment
            return conn.execute(insert(datasets).values(
                sha256=digest, shape=list(array.shape), dtype=str(array.dtype), nbytes=len(blob), data=blob,
                created_at=utcnow()).returning(datasets.c.id)).scalar_one()
    except IntegrityError:
        return conn.execute(find).scalar_one()


def dataset(reader: Reader, dataset_id: int) -> np.ndarray:
    """An uploaded array, loaded without pickle."""
    import numpy as np

    row = reader.one("SELECT data FROM datasets WHERE id = :id", {"id": dataset_id})
    if row is None:
        raise BadInput("dataset", f"no dataset {dataset_id}")
    return np.load(io.BytesIO(bytes(row["data"])), allow_pickle=False)
