"""The database's reader and read sessions: reads without transaction round trips."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import Settings
from app.database import ReadOnlySessionError, create_engine, create_reader
from app.models import User

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


async def test_read_session_statements_run_without_a_transaction(
    app: Any, backend: str
) -> None:
    if backend == "sqlite":
        return  # txid_current() is PostgreSQL's
    async with app.state.database.read_sessionmaker() as session:
        first = (await session.execute(TXID)).scalar_one()
        second = (await session.execute(TXID)).scalar_one()
    assert first != second


async def test_read_session_refuses_writes(app: Any, alice: User) -> None:
    database = app.state.database
    async with database.read_sessionmaker() as session:
        user = (
            await session.execute(select(User).where(User.id == alice.id))
        ).scalar_one()
        user.first_name = "Changed"
        with pytest.raises(ReadOnlySessionError):
            await session.flush()
        await session.rollback()
        with pytest.raises(ReadOnlySessionError):
            await session.execute(
                update(User).where(User.id == alice.id).values(first_name="Changed")
            )
    async with database.sessionmaker() as session:
        stored = await session.get(User, alice.id)
    assert stored is not None
    assert stored.first_name == alice.first_name


async def test_database_errors_never_carry_the_values(app: Any) -> None:
    # A failed statement's message reaches the error log with its traceback:
    # the values (password hashes, emails, phones) must not be in it.
    secret = "$argon2id$v=19$m=19456,t=2,p=1$not-for-logs"
    async with app.state.database.engine.connect() as connection:
        with pytest.raises(DBAPIError) as caught:
            await connection.execute(
                text("SELECT * FROM no_such_table WHERE x = :value"), {"value": secret}
            )
    assert secret not in str(caught.value)
    assert "parameters hidden" in str(caught.value)
