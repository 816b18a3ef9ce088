"""Migration 0006 on each backend: canonical identities filled, collisions refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.text import IdentityCollisionError
from app.database import alembic_config
from tests.conftest import (
    TEST_DATABASE_URL,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.helpers import canonical_identities_revisions, fullwidth

BEFORE, CANONICAL = canonical_identities_revisions()

INSERT = text(
    "INSERT INTO users (id, email, username, hashed_password, first_name, last_name)"
    " VALUES (:id, :email, :username, 'x', 'F', 'L')"
)


@pytest.fixture
async def blank_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of the run's backend, for migrating step by step."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
        return
    assert TEST_DATABASE_URL is not None
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


async def _migrate(url: str, revision: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def _run(url: str, work: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def _insert(*rows: tuple[int, str, str]) -> Callable[[Connection], None]:
    def work(connection: Connection) -> None:
        for row_id, email, username in rows:
            connection.execute(
                INSERT, {"id": row_id, "email": email, "username": username}
            )

    return work


def _state(connection: Connection) -> tuple[set[str], str | None]:
    columns = {column["name"] for column in inspect(connection).get_columns("users")}
    version = connection.execute(text("SELECT version_num FROM alembic_version"))
    return columns, version.scalar_one()


async def test_the_upgrade_fills_the_canonical_columns(blank_url: str) -> None:
    await _migrate(blank_url, BEFORE)
    # As the code before it stored them: lower-cased, fullwidth left alone.
    await _run(
        blank_url,
        _insert(
            (1, "ada.lovelace@example.com", "ada"),
            (2, fullwidth("bob") + "@example.com", "bob.smith"),
            (3, "straße@faß.de", "carl_"),
        ),
    )

    await _migrate(blank_url, CANONICAL)

    def rows(connection: Connection) -> list[tuple[Any, ...]]:
        result = connection.execute(
            text(
                "SELECT email, email_canonical, username_canonical FROM users"
                " ORDER BY id"
            )
        )
        return [tuple(row) for row in result]

    assert await _run(blank_url, rows) == [
        ("ada.lovelace@example.com", "ada.lovelace@example.com", "ada"),
        (fullwidth("bob") + "@example.com", "bob@example.com", "bob.smith"),
        # The local part is folded; the domain, already IDNA-normalised, is not.
        ("straße@faß.de", "strasse@faß.de", "carl_"),
    ]
    with pytest.raises(IntegrityError):  # the canonical form is what is unique
        await _run(blank_url, _insert((4, "BOB@example.com", "other")))


async def test_colliding_rows_stop_the_upgrade_with_a_report_and_change_nothing(
    blank_url: str,
) -> None:
    await _migrate(blank_url, BEFORE)
    await _run(
        blank_url,
        _insert(
            (1, "cux@example.com", "cux"),
            (2, fullwidth("cux") + "@example.com", fullwidth("cux")),
            (3, "fine@example.com", "fine"),
        ),
    )

    with pytest.raises(IdentityCollisionError) as refused:
        await _migrate(blank_url, CANONICAL)

    report = str(refused.value)
    assert "email 'cux@example.com': id 1 ('cux@example.com'), id 2 (" in report
    assert "username 'cux': id 1 ('cux'), id 2 ('" + fullwidth("cux") + "')" in report
    assert "fine" not in report
    assert "nothing was changed" in report
    columns, version = await _run(blank_url, _state)
    assert "email_canonical" not in columns
    assert version == BEFORE


async def test_the_downgrade_restores_the_previous_schema(blank_url: str) -> None:
    await _migrate(blank_url, BEFORE)
    await _run(blank_url, _insert((1, "x@example.com", "xavier")))
    await _migrate(blank_url, CANONICAL)
    await _run(  # as typed, which the code before 0006 would not find
        blank_url,
        lambda c: c.execute(text("UPDATE users SET email = 'X@example.com'")),
    )

    await asyncio.to_thread(command.downgrade, alembic_config(blank_url), BEFORE)

    columns, version = await _run(blank_url, _state)
    assert {"email_canonical", "username_canonical"}.isdisjoint(columns)
    assert version == BEFORE
    emails = await _run(
        blank_url, lambda c: c.execute(text("SELECT email FROM users")).scalars().all()
    )
    assert emails == ["x@example.com"]
