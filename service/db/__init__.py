"""The database: its tables (schema), connections (connect: the driver, engine: SQLAlchemy), every read
(reads) and every write (writes)."""
