"""`/ready` is 503 while the schema is not at the migrations' head, and says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.script import ScriptDirectory
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text

from app.database import alembic_config, upgrade_to_head
from app.main import create_app
from tests.conftest import (
    BACKENDS,
    TEST_DATABASE_URL,
    _create_postgres_database,
    _drop_postgres_database,
    make_settings,
)
from tests.helpers import recorded_statements


@pytest.fixture(params=BACKENDS)
async def blank_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A database of each backend with no table at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'blank.db'}"
        return
    assert TEST_DATABASE_URL is not None
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


@pytest.fixture
async def http_and_app(blank_url: str) -> AsyncIterator[tuple[AsyncClient, Any]]:
    app = create_app(make_settings(DATABASE_URL=blank_url))
    async with AsyncClient(
        transport=ASGITransport(app=app), base_url="http://t"
    ) as http:
        yield http, app
    await app.state.database.dispose()


def head() -> str:
    """The last migration, as Alembic reads the scripts."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def test_an_empty_database_is_not_ready_until_migrated(
    http_and_app: tuple[AsyncClient, Any], blank_url: str
) -> None:
    http, app = http_and_app
    empty = await http.get("/ready")
    assert empty.status_code == 503
    error = empty.json()["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE"
    (database,) = [d for d in error["details"] if d["field"] == "database"]
    assert database["message"] == (
        f"schema at revision none, the migrations' head is {head()}: "
        "run `python -m app migrate`"
    )

    await asyncio.to_thread(upgrade_to_head, blank_url)  # no restart needed
    migrated = await http.get("/ready")
    assert migrated.status_code == 200
    assert migrated.json()["status"] == "ready"

    # Once at head, the probe stays one cheap statement.
    with recorded_statements(app.state.database.engine) as statements:
        assert (await http.get("/ready")).status_code == 200
    assert not [s for s in statements if "alembic_version" in s]


async def test_a_database_behind_the_head_names_both_revisions(
    http_and_app: tuple[AsyncClient, Any], blank_url: str
) -> None:
    http, _app = http_and_app
    await asyncio.to_thread(alembic_command.upgrade, alembic_config(blank_url), "0001")
    behind = await http.get("/ready")
    assert behind.status_code == 503
    (database,) = [
        d for d in behind.json()["error"]["details"] if d["field"] == "database"
    ]
    assert database["message"].startswith(
        f"schema at revision 0001, the migrations' head is {head()}"
    )


async def test_a_database_ahead_of_the_code_is_ready(
    http_and_app: tuple[AsyncClient, Any], blank_url: str
) -> None:
    # A migration this code does not know ran (a rollback of the code, old
    # instances during a rollout): `migrate` cannot mend that, and marking
    # every old instance unready would take the service down.
    http, app = http_and_app
    await asyncio.to_thread(upgrade_to_head, blank_url)
    async with app.state.database.engine.begin() as connection:
        await connection.execute(
            text("UPDATE alembic_version SET version_num = '9999_from_the_future'")
        )

    ready = await http.get("/ready")

    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
