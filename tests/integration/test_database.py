"""The database's reader: reads without transaction round trips."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.database import create_engine, create_reader

TXID = text("SELECT txid_current()")


async def _two_txids(connection: AsyncConnection) -> tuple[int, int]:
    first = (await connection.execute(TXID)).scalar_one()
    second = (await connection.execute(TXID)).scalar_one()
    return first, second


async def test_sqlite_reader_is_the_engine(app: Any, backend: str) -> None:
    database = app.state.database
    # SQLite reads outside a transaction anyway: nothing to switch.
    assert (database.reader is database.engine) == (backend == "sqlite")


async def test_reader_statements_run_without_a_transaction_around_them(
    settings: Settings, backend: str
) -> None:
    if backend == "sqlite":
        return  # txid_current() is PostgreSQL's; see the test above
    engine = create_engine(settings.model_copy(update={"DB_POOL_SIZE": 1}))
    try:
        async with create_reader(engine).connect() as connection:
            first, second = await _two_txids(connection)
        assert first != second  # each statement its own transaction: no BEGIN

        # Its one pooled connection is transactional again for everyone else.
        async with engine.connect() as connection:
            first, second = await _two_txids(connection)
        assert first == second
    finally:
        await engine.dispose()
