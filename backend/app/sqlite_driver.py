"""SQLite through aiosqlite with one trip to its thread per statement.

aiosqlite runs every call on a connection in that connection's own thread and hands the result back to the
event loop. SQLAlchemy's aiosqlite adaptation makes four such calls for a statement that returns rows (open a
cursor, execute, fetch the rows, close the cursor) and three for one that does not: each is a hand-off to the
thread and a wake-up of the event loop. :class:`OneTripCursor` makes them one: a function run in aiosqlite's
thread opens the cursor, executes, reads the description, the rows, the row count and the last row id, and
closes it. Nothing else changes: SQLAlchemy's adaptation (its connection, transactions, errors) is used as it
is, with this cursor (:data:`DBAPI`, given to ``create_async_engine`` as its ``module``).

Like SQLAlchemy's own adaptation it reaches into aiosqlite's connection (its thread's queue through
``_execute``, the ``sqlite3`` connection as ``_conn``); ``aiosqlite`` is pinned in ``pyproject.toml``, and
``backend/tests/unit/test_sqlite_driver.py`` checks what this module relies on.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection, AsyncAdapt_aiosqlite_cursor, AsyncAdapt_aiosqlite_dbapi
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_


def _run(connection: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> tuple:
    """In aiosqlite's thread: the whole statement, its cursor opened and closed."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement makes one trip to aiosqlite's thread; its rows are read there, all of them
    (as SQLAlchemy's adaptation does for a cursor that is not server-side)."""

    __slots__ = ("_description", "_rowcount", "_lastrowid")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # no aiosqlite cursor: each statement opens and closes its own in the thread
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description = None
        self._rowcount = -1
        self._lastrowid = None

    @property
    def description(self):
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self):
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass  # every row is read at once

    def execute(self, operation: Any, parameters: Any = None) -> None:
        try:
            await_(self._trip(operation, parameters, many=False))
        except Exception as error:  # noqa: BLE001 - raised again as the DBAPI's error, as SQLAlchemy's cursor does
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        try:
            await_(self._trip(operation, seq_of_parameters, many=True))
        except Exception as error:  # noqa: BLE001 - raised again as the DBAPI's error, as SQLAlchemy's cursor does
            self._adapt_connection._handle_exception(error)

    async def _trip(self, operation: Any, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection
        async with self._adapt_connection._execute_mutex:
            self._description, rows, self._rowcount, self._lastrowid = await connection._execute(
                _run, connection._conn, operation, parameters, many
            )
        self._rows = collections.deque(rows)

    async def _async_soft_close(self) -> None:
        return None  # the statement's cursor is closed already

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite module, whose connections make :class:`OneTripCursor` cursors."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


#: the ``module`` of a SQLite ``create_async_engine``
DBAPI = OneTripDBAPI(aiosqlite, sqlite3)
