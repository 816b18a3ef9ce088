"""The connection pool serves waiting requests first come, first served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.database import create_engine
from tests.conftest import make_settings


@pytest.fixture
async def one_connection(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine whose pool holds exactly one connection."""
    settings = make_settings(
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}",
        DB_POOL_SIZE=1,
        DB_POOL_TIMEOUT_SECONDS=2,
    )
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


async def checkout(engine: AsyncEngine) -> AsyncConnection:
    return await engine.connect()


async def test_a_returned_connection_goes_to_the_oldest_waiter(
    one_connection: AsyncEngine,
) -> None:
    served: list[str] = []
    first = await one_connection.connect()

    async def waiter() -> None:
        async with one_connection.connect() as connection:
            served.append("waiter")
            await connection.execute(text("SELECT 1"))

    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)  # the waiter is in line now
    await first.close()
    # Asking again at once, before the waiter had a turn: with asyncio.Queue
    # this newcomer took the connection and sent the waiter to the back.
    async with one_connection.connect() as again:
        served.append("newcomer")
        await again.execute(text("SELECT 1"))
    await asyncio.wait_for(waiting, 2)
    assert served == ["waiter", "newcomer"]


async def test_a_waiter_that_gave_up_takes_nothing(one_connection: AsyncEngine) -> None:
    one_connection.pool._timeout = 0.1  # type: ignore[attr-defined]
    first = await one_connection.connect()
    with pytest.raises(PoolTimeoutError):
        await one_connection.connect()
    cancelled = asyncio.create_task(checkout(one_connection))
    await asyncio.sleep(0.02)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await first.close()
    # The connection went to neither of them: the next request gets it at once.
    async with asyncio.timeout(0.05), one_connection.connect() as connection:
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_a_waiter_cancelled_as_its_connection_arrives_does_not_lose_it(
    one_connection: AsyncEngine,
) -> None:
    one_connection.pool._timeout = 0.2  # type: ignore[attr-defined]
    first = await one_connection.connect()
    waiting = asyncio.create_task(checkout(one_connection))
    await asyncio.sleep(0.02)
    await first.close()  # handed to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs (a client went away)
    try:
        connection = await waiting
    except asyncio.CancelledError:
        pass
    else:  # it won the race: using and closing it must return it
        await connection.close()
    async with one_connection.connect() as connection:
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_a_connection_closed_while_idle_is_replaced_before_use(
    database_url: str, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("the idle ping guards PostgreSQL connections")
    settings = make_settings(
        DATABASE_URL=database_url,
        DB_POOL_SIZE=1,
        DB_POOL_PRE_PING_IDLE_SECONDS=0.2,
    )
    engine = create_engine(settings)
    other = create_engine(make_settings(DATABASE_URL=database_url))
    try:
        async with engine.connect() as connection:
            victim = await connection.scalar(text("SELECT pg_backend_pid()"))
        # Busy a moment ago: used as it is (no ping, same server process).
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT pg_backend_pid()")) == victim
        async with other.connect() as connection:
            # Another session ends it, as a server restart or a proxy would.
            await connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": victim}
            )
        await asyncio.sleep(0.3)  # now idle longer than the ping threshold
        async with engine.connect() as connection:
            replacement = await connection.scalar(text("SELECT pg_backend_pid()"))
        assert replacement != victim  # pinged, found dead, replaced: no error
    finally:
        await engine.dispose()
        await other.dispose()
