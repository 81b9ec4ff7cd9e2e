"""SQLite with one trip to aiosqlite's thread per statement (backend/app/sqlite_driver.py): what a statement gives
SQLAlchemy is what the stock adaptation gives, in one hand-off instead of three or four."""

from __future__ import annotations

import threading

import aiosqlite
import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import create_async_engine

from backend.app import sqlite_driver


@pytest.fixture
async def engine(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'one-trip.db'}", module=sqlite_driver.DBAPI)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"))
    yield engine
    await engine.dispose()


def test_what_the_module_relies_on_in_aiosqlite():
    assert callable(getattr(aiosqlite.Connection, "_execute", None))
    assert aiosqlite.__version__ == "0.22.1"  # pinned in pyproject.toml: look at _execute and _conn again before moving it


async def test_rows_counts_and_ids_are_those_of_the_statement(engine):
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        assert inserted.lastrowid == 1 and inserted.rowcount == 1
        many = await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}, {"v": "d"}])
        assert many.rowcount == 3
        returned = await conn.execute(text("INSERT INTO t (v) VALUES ('e') RETURNING id, v"))
        assert returned.all() == [(5, "e")]
        rows = await conn.execute(text("SELECT id, v FROM t WHERE id > :n ORDER BY id"), {"n": 2})
        assert list(rows.keys()) == ["id", "v"] and rows.all() == [(3, "c"), (4, "d"), (5, "e")]
        # a compare-and-set reads the row count of its UPDATE: one row hit, then none
        assert (await conn.execute(text("UPDATE t SET v = 'A' WHERE id = 1 AND v = 'a'"))).rowcount == 1
        assert (await conn.execute(text("UPDATE t SET v = 'A' WHERE id = 1 AND v = 'a'"))).rowcount == 0
        first = await conn.execute(text("SELECT v FROM t ORDER BY id"))
        assert first.fetchone() == ("A",) and first.fetchmany(2) == [("b",), ("c",)] and first.fetchall() == [("d",), ("e",)]


async def test_an_error_is_sqlalchemys_and_the_connection_goes_on(engine):
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO t (v) VALUES ('x')"))
        with pytest.raises(exc.IntegrityError):
            await conn.execute(text("INSERT INTO t (v) VALUES ('x')"))
        with pytest.raises(exc.OperationalError):
            await conn.execute(text("SELECT nothing FROM nowhere"))
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
        await conn.rollback()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0  # rolled back


async def test_one_trip_to_aiosqlites_thread_per_statement(engine, monkeypatch):
    trips: list[int] = []
    real = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):
        trips.append(threading.get_ident())
        return await real(self, fn, *args, **kwargs)

    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # the connection is open and its transaction begun
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        await conn.execute(text("INSERT INTO t (v) VALUES ('y')"))
        assert (await conn.execute(text("SELECT v FROM t"))).all() == [("y",)]
        assert len(trips) == 2  # SQLAlchemy's own cursor makes 3 and 4 (cursor, execute, rows, close)
        monkeypatch.undo()
        # and the statement ran in aiosqlite's thread, not on the event loop's
        await (await conn.get_raw_connection()).driver_connection.create_function("thread_id", 0, threading.get_ident)
        assert (await conn.execute(text("SELECT thread_id()"))).scalar_one() != threading.get_ident()
