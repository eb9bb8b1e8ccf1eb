"""New ids for jobs and sweeps, never one a deleted job or sweep had.

PostgreSQL's sequences never give an id twice. SQLite gives a new row the greatest id plus one, which after
`klab delete` of the newest jobs is a deleted job's: a worker still training the deleted job took the new one for
it (a task knows its jobs by id, status and attempts, which a new job can match) and stored its results in it, or
cancelled it. So on SQLite the greatest id each table ever gave is kept in id_floors (migration 0010), raised in
the transaction that gives new ones (SQLite's transactions here begin IMMEDIATE: no other writer meanwhile).
"""
from __future__ import annotations

from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.dialects.postgresql import REGCLASS

from service.db.schema import id_floors, jobs


def reserve_ids(conn: Connection, n: int, table: Table = jobs) -> list[int]:
    """n new ids of `table` (jobs or sweeps), ascending. PostgreSQL: from the sequence (looked up once, not once
    an id: 5x faster), which no rollback takes back, so rows inserted with them later, by any connection, keep
    them; they come back as one array (a row an id took twice as long). SQLite: the next after the greatest
    ever given."""
    if conn.dialect.name == "postgresql":
        sequence = select(func.pg_get_serial_sequence(table.name, "id").cast(REGCLASS)).scalar_subquery()
        taken = select(func.nextval(sequence).label("id")).select_from(func.generate_series(1, n)).subquery()
        return sorted(conn.execute(select(func.array_agg(taken.c.id))).scalar_one())
    floor = select(id_floors.c.last_id).where(id_floors.c.name == table.name).scalar_subquery()
    greatest = select(func.max(func.coalesce(func.max(table.c.id), 0), func.coalesce(floor, 0)))
    start = conn.execute(greatest).scalar_one() + 1
    conn.execute(update(id_floors).where(id_floors.c.name == table.name).values(last_id=start + n - 1))
    return list(range(start, start + n))
