"""Statements compiled once and run as one executemany over rows given as tuples.

The ORM's bulk paths cost about twice the database's own time per row (a dict per row, and rows
with a NULL split into separate executemany calls), and a statement run through the session costs
~0.1 ms before it reaches the database. A run writes ~5,000 sightings a second, so the store
compiles its few statements for the engine's dialect up front and hands the driver plain tuples
(or dicts, for drivers with named parameters) in one ``executemany`` per statement and batch.

One exception keeps other backends as fast as before: where the dialect itself folds an
executemany INSERT into multi-row VALUES (psycopg2), INSERTs go through Core, which does that.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Table, insert
from sqlalchemy.sql import ClauseElement

Row = tuple[Any, ...]


class BulkStatement:
    """A Core statement whose parameters are given, row by row, in the order of ``params``."""

    def __init__(self, statement: ClauseElement, params: Sequence[str], dialect: Dialect) -> None:
        self.statement = statement
        self.params = tuple(params)
        is_insert = isinstance(statement, Insert)
        self._through_core = is_insert and bool(dialect.use_insertmanyvalues_wo_returning)
        compiled = statement.compile(dialect=dialect, column_keys=list(self.params) if is_insert else None)
        self.sql = str(compiled)
        self._positional = bool(dialect.positional)
        order = tuple(compiled.positiontup or ()) if self._positional else tuple(compiled.binds)
        if sorted(order) != sorted(self.params):
            raise ValueError(f"statement binds {order}, rows give {self.params}")
        positions = [self.params.index(name) for name in order]
        self._reorder = itemgetter(*positions) if positions != list(range(len(positions))) else None

    @classmethod
    def insert_into(cls, table: Table, columns: Sequence[str], dialect: Dialect) -> BulkStatement:
        """INSERT of ``columns`` (table column names) into ``table``."""
        return cls(insert(table), columns, dialect)

    def execute(self, connection: Connection, rows: Sequence[Row]) -> None:
        """Run the statement once per row, in order, in the connection's transaction."""
        if not rows:
            return
        if self._through_core:
            connection.execute(self.statement, [dict(zip(self.params, row)) for row in rows])
        elif not self._positional:
            connection.exec_driver_sql(self.sql, [dict(zip(self.params, row)) for row in rows])
        elif self._reorder is not None:  # never for one parameter, where itemgetter would give a bare value
            connection.exec_driver_sql(self.sql, [self._reorder(row) for row in rows])
        else:
            connection.exec_driver_sql(self.sql, list(rows))
