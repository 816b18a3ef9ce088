"""Shared fixtures: one migrated database per backend, an app, a clean state per test.

Database-bound tests run on SQLite always and again on PostgreSQL when
`TEST_DATABASE_URL` is set: the suite creates its own database on that server,
with a random name, and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("ENVIRONMENT", "test")

import asyncpg
import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.backends import email_throttle
from app.core.attempts import InMemoryLoginAttemptStore
from app.core.cache import MemoryAuthCache
from app.core.config import Settings
from app.core.scopes import Role
from app.database import upgrade_to_head
from app.main import create_app
from app.models import Base, User
from app.schemas.user import UserCreateByAdmin
from app.services import users as users_service

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")
BACKENDS = ["sqlite", *(["postgresql"] if TEST_DATABASE_URL else [])]
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: ignore any developer `.env`, test environment."""
    values: dict[str, Any] = {
        "ENVIRONMENT": "test",
        "SECRET_KEY": TEST_SECRET,
        "LOG_LEVEL": "INFO",
        "RATE_LIMIT_ENABLED": False,  # rate-limit tests enable it on their own app
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _admin_execute(server_url: str, statement: str) -> None:
    url = make_url(server_url)
    admin = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _create_postgres_database(server_url: str) -> tuple[str, str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    await _admin_execute(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name)
    return name, url.render_as_string(hide_password=False)


async def _drop_postgres_database(server_url: str, name: str) -> None:
    await _admin_execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=BACKENDS)
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A freshly migrated database of each backend, for the whole run."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "test.db"
        url = f"sqlite+aiosqlite:///{path}"
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
        return
    assert TEST_DATABASE_URL is not None
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at the run's database and a private file store."""
    storage = tmp_path_factory.mktemp("attachments")
    mail = tmp_path_factory.mktemp("mail")
    return make_settings(
        DATABASE_URL=database_url, STORAGE_DIR=str(storage), MAIL_DIR=str(mail)
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    """One application per backend for the whole run."""
    application = create_app(settings)
    yield application
    await application.state.database.dispose()


@pytest.fixture
def engine(app: Any) -> AsyncEngine:
    """The application's engine."""
    engine: AsyncEngine = app.state.database.engine
    return engine


async def truncate_all(engine: AsyncEngine) -> None:
    """Empty every table (children first).

    PostgreSQL uses TRUNCATE: the audit log's trigger refuses row DELETEs, and
    TRUNCATE is the statement a test harness (never the API) may use.
    """
    tables = list(reversed(Base.metadata.sorted_tables))
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            names = ", ".join(table.name for table in tables)
            await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            return
        for table in tables:
            await connection.execute(delete(table))


@pytest.fixture
async def client(app: Any, engine: AsyncEngine) -> AsyncIterator[AsyncClient]:
    """An HTTP client on the app, starting from empty tables."""
    await truncate_all(engine)
    for stored in Path(app.state.settings.STORAGE_DIR).glob("*"):
        stored.unlink()
    # No lockout or cached user carried over (ids restart after truncation).
    app.state.login_attempts = InMemoryLoginAttemptStore()
    app.state.auth_cache = MemoryAuthCache(app.state.settings.AUTH_CACHE_TTL_SECONDS)
    app.state.email_throttle = email_throttle(app.state.settings)
    transport = ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def backend(database_url: str) -> str:
    """'sqlite' or 'postgresql'."""
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def signup_payload() -> dict[str, Any]:
    """A valid signup body; tests change what they need."""
    return {
        "email": "Ada.Lovelace@Example.com",
        "username": "ada",
        "password": "Analytical1",
        "confirm_password": "Analytical1",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "desired_name": "Ada",
        "phone": "+44 20 7946 0000",
        "age": 36,
    }


DEFAULT_PASSWORD = "Passw0rd-Test"


async def make_user(
    app: Any,
    username: str,
    *,
    role: str = "user",
    password: str = DEFAULT_PASSWORD,
    is_active: bool = True,
    first_name: str = "Test",
    last_name: str = "User",
) -> User:
    """Create a user through the service layer (as an admin would)."""
    payload = UserCreateByAdmin(
        email=f"{username}@example.com",
        username=username,
        password=password,
        first_name=first_name,
        last_name=last_name,
        role=Role(role),
        is_active=is_active,
    )
    async with app.state.database.sessionmaker() as session:
        return await users_service.create_user(
            session, app.state.password_hasher, payload
        )


async def login(
    client: AsyncClient,
    username: str,
    password: str = DEFAULT_PASSWORD,
    **extra: str,
) -> dict[str, Any]:
    """Log in with the OAuth2 form; assert success; return the token response."""
    response = await client.post(
        "/api/v1/auth/login", data={"username": username, "password": password, **extra}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    """Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def alice(app: Any, client: AsyncClient) -> User:
    """A plain user."""
    return await make_user(app, "alice", first_name="Alice", last_name="Liddell")


@pytest.fixture
async def admin(app: Any, client: AsyncClient) -> User:
    """An administrator."""
    return await make_user(app, "root", role="admin")


async def audit_rows(engine: AsyncEngine, **where: object) -> list[dict[str, Any]]:
    """Audit rows (as dicts), oldest first, optionally filtered by column values."""
    clauses = " AND ".join(f"{column} = :{column}" for column in where) or "1 = 1"
    async with engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT * FROM audit_log WHERE {clauses} ORDER BY id"),  # noqa: S608
            where,
        )
        return [dict(row._mapping) for row in result]
