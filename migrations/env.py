"""Alembic environment: async engine, URL from settings, shared connection in tests."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.config import get_settings
from app.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_on(connection: Connection) -> None:
    """Run the migrations on an open synchronous connection."""
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    """Open an async engine on `url` and migrate through it."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations_on)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Migrate the configured database (or the connection a caller handed us)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations_on(connection)
        return
    url = config.attributes.get("url") or get_settings().DATABASE_URL
    asyncio.run(run_async_migrations(url))


if context.is_offline_mode():
    context.configure(
        url=get_settings().DATABASE_URL,
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
