"""The SQLite driver: statements on the loop, slow reads and waits off it, same results."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import sqlite_driver
from app.database import create_engine
from app.repositories.json_rows import json_row_class
from app.sqlite_driver import InlineConnection
from tests.conftest import make_settings


@asynccontextmanager
async def notes_engine(
    tmp_path: Path, busy_timeout_ms: int = 5000
) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh file holding one `notes` table."""
    settings = make_settings(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'notes.db'}",
        SQLITE_BUSY_TIMEOUT_MS=busy_timeout_ms,
    )
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE)")
            )
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with notes_engine(tmp_path) as engine:
        yield engine


class TripCounter:
    """Counts calls queued to the connection's thread."""

    def __init__(self, adapted: InlineConnection) -> None:
        self.count = 0
        driver = adapted.driver
        original = driver._execute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        driver._execute = counted  # type: ignore[method-assign]


async def trips(connection: AsyncConnection) -> TripCounter:
    raw = await connection.get_raw_connection()
    adapted = raw.dbapi_connection
    assert isinstance(adapted, InlineConnection)
    return TripCounter(adapted)


async def test_statements_and_their_transaction_stay_on_the_loop(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        counter = await trips(connection)
        rows = (
            await connection.execute(text("SELECT 1, 'a' UNION SELECT 2, 'b'"))
        ).all()
        inserted = await connection.execute(
            text("INSERT INTO notes (body) VALUES ('kept') RETURNING id")
        )
        assert inserted.scalar_one() == 1
        await connection.commit()
        assert counter.count == 0  # no hand-off to the connection's thread
    assert [tuple(row) for row in rows] == [(1, "a"), (2, "b")]
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT body FROM notes"))).all() == [
            ("kept",)
        ]


SLOW_COUNT = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000)"
    " SELECT count(*) FROM n"
)
SLOW_JOIN = (
    "SELECT count(*) FROM notes, (WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL"
    " SELECT x + 1 FROM n WHERE x < 300000) SELECT count(*) FROM n)"
)


class Ticker:
    """Counts how often the event loop got a turn while it ran."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.001)

    async def stop(self) -> int:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.ticks


async def test_a_read_over_its_budget_finishes_in_the_thread_and_frees_the_loop(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        counter = await trips(connection)
        ticker = Ticker()
        # Any statement outside a transaction, and a plain SELECT inside one:
        # both are interrupted on the loop and run again, whole, in the thread.
        alone = await connection.scalar(text(SLOW_COUNT))
        await connection.execute(text("INSERT INTO notes (body) VALUES ('pending')"))
        in_transaction = await connection.scalar(text(SLOW_JOIN))
        ticks = await ticker.stop()
        await connection.commit()
        assert counter.count == 2
    assert alone == 300_000
    assert in_transaction == 1
    assert ticks > 5  # other tasks ran while the slow reads did
    async with engine.connect() as connection:
        # The interrupted read did not roll the transaction back.
        assert await connection.scalar(text("SELECT body FROM notes")) == "pending"


async def test_rollback_undoes_a_write(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        result = await connection.execute(text("INSERT INTO notes (body) VALUES ('x')"))
        assert result.rowcount == 1
        await connection.rollback()
        count = await connection.execute(text("SELECT count(*) FROM notes"))
        assert count.scalar_one() == 0


async def test_a_failed_statement_still_rolls_the_transaction_back(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("INSERT INTO notes (body) VALUES ('dup')"))
        await connection.commit()
        await connection.execute(text("INSERT INTO notes (body) VALUES ('lost')"))
        with pytest.raises(IntegrityError):
            await connection.execute(text("INSERT INTO notes (body) VALUES ('dup')"))
        await connection.rollback()
        bodies = await connection.execute(text("SELECT body FROM notes ORDER BY id"))
        assert bodies.all() == [("dup",)]


async def add_notes(engine: AsyncEngine, bodies: list[str]) -> None:
    """Insert notes in one statement with one parameter set each, and commit."""
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO notes (body) VALUES (:body)"),
            [{"body": body} for body in bodies],
        )


async def test_many_parameter_sets_in_one_statement(engine: AsyncEngine) -> None:
    await add_notes(engine, [f"n{index}" for index in range(5)])
    async with engine.connect() as connection:
        count = await connection.execute(text("SELECT count(*) FROM notes"))
        assert count.scalar_one() == 5


async def test_streamed_results_use_a_server_side_cursor(engine: AsyncEngine) -> None:
    await add_notes(engine, [f"s{index}" for index in range(3)])
    async with engine.connect() as connection:
        stream = await connection.stream(text("SELECT body FROM notes ORDER BY id"))
        bodies = [row.body async for row in stream]
        await connection.rollback()
    assert bodies == ["s0", "s1", "s2"]


def test_json_rows_need_real_columns_and_a_known_dialect() -> None:
    table = Table("things", MetaData(), Column("id", Integer, primary_key=True))
    with pytest.raises(ValueError, match="not columns of things"):
        json_row_class(table, ["id", "missing"])
    row = json_row_class(table, ["id"])
    with pytest.raises(NotImplementedError, match="mysql"):
        select(row()).select_from(table).compile(dialect=mysql.dialect())


async def test_writers_queue_and_an_invalidated_writer_lets_the_next_one_in(
    tmp_path: Path,
) -> None:
    async with notes_engine(tmp_path, busy_timeout_ms=2000) as engine:
        first = await engine.connect()
        # Holds the write lock from here.
        await first.execute(text("INSERT INTO notes (body) VALUES ('first')"))

        async def second_writer() -> None:
            async with engine.begin() as connection:
                await connection.execute(
                    text("INSERT INTO notes (body) VALUES ('second')")
                )

        waiting = asyncio.create_task(second_writer())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # queued behind the first writer, not failed
        await first.invalidate()  # e.g. the request was cancelled mid-write
        await first.close()
        await asyncio.wait_for(waiting, 1)
        async with engine.connect() as connection:
            bodies = (await connection.execute(text("SELECT body FROM notes"))).all()
        assert bodies == [("second",)]  # the invalidated write was discarded


async def test_a_writer_waits_no_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    async with (
        notes_engine(tmp_path, busy_timeout_ms=300) as engine,
        engine.connect() as first,
        engine.connect() as second,
    ):
        await first.execute(text("INSERT INTO notes (body) VALUES ('1')"))
        with pytest.raises(OperationalError, match="database is locked"):
            await second.execute(text("INSERT INTO notes (body) VALUES ('2')"))
        await second.rollback()
        await first.commit()
        await second.execute(text("INSERT INTO notes (body) VALUES ('3')"))
        await second.commit()


async def test_a_writer_waits_for_another_process_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    async with notes_engine(tmp_path, busy_timeout_ms=3000) as engine:
        other = sqlite3.connect(tmp_path / "notes.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process writes
        other.execute("INSERT INTO notes (body) VALUES ('other')")

        async def write() -> None:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO notes (body) VALUES ('us')"))

        ticker = Ticker()
        writer = asyncio.create_task(write())
        await asyncio.sleep(0.2)
        assert not writer.done()  # waiting, not failed
        other.execute("COMMIT")
        await asyncio.wait_for(writer, 1)
        assert await ticker.stop() > 50  # the loop kept turning meanwhile
        other.close()
        async with engine.connect() as connection:
            bodies = await connection.execute(
                text("SELECT body FROM notes ORDER BY id")
            )
            assert bodies.all() == [("other",), ("us",)]


async def test_a_writer_gives_up_on_another_process_after_the_busy_timeout(
    tmp_path: Path,
) -> None:
    async with notes_engine(tmp_path, busy_timeout_ms=300) as engine:
        other = sqlite3.connect(tmp_path / "notes.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with engine.connect() as connection:
                started = asyncio.get_running_loop().time()
                with pytest.raises(OperationalError, match="database is locked"):
                    await connection.execute(
                        text("INSERT INTO notes (body) VALUES ('us')")
                    )
                waited = asyncio.get_running_loop().time() - started
                assert 0.25 < waited < 1.0
        finally:
            other.close()


async def test_checkpoints_run_in_the_thread_every_few_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "CHECKPOINT_EVERY", 3)
    database = tmp_path / "notes.db"
    async with notes_engine(tmp_path) as engine, engine.connect() as connection:
        counter = await trips(connection)
        # Write commits count (the fixture's CREATE TABLE took no write lock).
        for body in ("marker-one", "marker-two"):
            await connection.execute(
                text("INSERT INTO notes (body) VALUES (:body)"), {"body": body}
            )
            await connection.commit()
            # Still only in the write-ahead log: no automatic checkpoint.
            assert body.encode() not in database.read_bytes()
        assert counter.count == 0
        await connection.execute(text("INSERT INTO notes (body) VALUES ('three')"))
        await connection.commit()
        assert counter.count == 1
        assert b"marker-two" in database.read_bytes()  # copied into the file


async def test_a_statement_over_budget_goes_straight_to_the_thread_for_a_while(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "SLOW_RUNS_IN_THREAD", 2)
    async with engine.connect() as connection:
        counter = await trips(connection)
        assert await connection.scalar(text(SLOW_COUNT)) == 300_000
        assert counter.count == 1  # interrupted on the loop, finished in the thread
        # With all the time in the world on the loop, it would now finish
        # there: it does not get tried there for its next two runs.
        monkeypatch.setattr(sqlite_driver, "INLINE_READ_BUDGET", 60.0)
        for expected_trips in (2, 3, 3):
            assert await connection.scalar(text(SLOW_COUNT)) == 300_000
            assert counter.count == expected_trips
        await connection.rollback()


async def test_a_long_log_is_truncated_at_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other processes' writers can keep the log from starting over; past
    # WAL_TRUNCATE_FRAMES pages the checkpoint empties the file instead.
    monkeypatch.setattr(sqlite_driver, "CHECKPOINT_EVERY", 1)
    log = tmp_path / "notes.db-wal"
    async with notes_engine(tmp_path) as engine, engine.connect() as connection:
        await connection.execute(text("INSERT INTO notes (body) VALUES ('short')"))
        await connection.commit()
        assert log.stat().st_size > 0  # checkpointed, the file kept for reuse
        monkeypatch.setattr(sqlite_driver, "WAL_TRUNCATE_FRAMES", 1)
        await connection.execute(text("INSERT INTO notes (body) VALUES ('long')"))
        await connection.commit()
        assert log.stat().st_size == 0
        bodies = await connection.execute(text("SELECT body FROM notes ORDER BY id"))
        assert bodies.all() == [("short",), ("long",)]
