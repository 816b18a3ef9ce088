"""A database that is down or busy answers 503 with Retry-After, and recovery needs no restart.

Real outages, no mocks: PostgreSQL behind a TCP proxy the test cuts and
restores, a port nothing listens on, a role PostgreSQL refuses for too many
connections, a pool whose connections are all held, and an SQLite file
another connection keeps locked past the busy timeout.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.main import create_app
from tests.conftest import TEST_DATABASE_URL, _admin_execute, bearer, make_settings
from tests.tcp_proxy import TcpProxy, free_port, tcp_proxy

ITEMS = "/api/v1/items"
SIGNUP = "/api/v1/auth/signup"
PASSWORD = "Outage-Passw0rd"
needs_postgresql = pytest.mark.skipif(
    TEST_DATABASE_URL is None, reason="TEST_DATABASE_URL not set"
)


def signup_body(name: str) -> dict[str, Any]:
    return {
        "email": f"{name}@example.com",
        "username": name,
        "password": PASSWORD,
        "confirm_password": PASSWORD,
        "first_name": "Out",
        "last_name": "Age",
    }


@asynccontextmanager
async def http_on(**settings: Any) -> AsyncIterator[AsyncClient]:
    """A client on a new app with these settings (its engine disposed after)."""
    async with app_and_http(**settings) as (_app, http):
        yield http


@asynccontextmanager
async def app_and_http(**settings: Any) -> AsyncIterator[tuple[Any, AsyncClient]]:
    app = create_app(make_settings(**settings))
    transport = ASGITransport(app=app, client=("203.0.113.8", 40000))
    try:
        async with AsyncClient(transport=transport, base_url="http://t") as http:
            yield app, http
    finally:
        await app.state.database.dispose()


async def sign_up_and_log_in(http: AsyncClient) -> dict[str, str]:
    name = f"u{uuid.uuid4().hex[:10]}"
    assert (await http.post(SIGNUP, json=signup_body(name))).status_code == 201
    tokens = await http.post(
        "/api/v1/auth/login", data={"username": name, "password": PASSWORD}
    )
    assert tokens.status_code == 200, tokens.text
    return bearer(tokens.json()["access_token"])


def assert_unavailable(response: Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert body["error"]["request_id"]
    assert int(response.headers["Retry-After"]) > 0


async def the_three(http: AsyncClient, headers: dict[str, str]) -> list[Response]:
    """POST /items, GET /items and a signup, as a user would send them."""
    return [
        await http.post(ITEMS, json={"title": "during"}, headers=headers),
        await http.get(ITEMS, headers=headers),
        await http.post(SIGNUP, json=signup_body(f"s{uuid.uuid4().hex[:10]}")),
    ]


@contextmanager
def proxied(database_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the PostgreSQL server of `database_url`, and the URL through it."""
    url = make_url(database_url)
    with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port)
        yield proxy, through.render_as_string(hide_password=False)


@needs_postgresql
async def test_postgresql_cut_off_is_503_and_comes_back_without_restart(
    database_url: str, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("the proxy stands in front of PostgreSQL")
    with proxied(database_url) as (proxy, url):
        async with http_on(DATABASE_URL=url) as http:
            headers = await sign_up_and_log_in(http)

            proxy.cut()  # the pooled connections are reset, new ones refused
            for response in await the_three(http, headers):
                assert_unavailable(response)
            # Still refused (nothing listens): every request asks again.
            for response in await the_three(http, headers):
                assert_unavailable(response)

            proxy.restore()
            created, listed, signed_up = await the_three(http, headers)
            assert created.status_code == 201, created.text
            assert listed.status_code == 200
            assert listed.json()["data"]["total"] == 1
            assert signed_up.status_code == 201


async def test_postgresql_not_listening_is_503() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    async with http_on(DATABASE_URL=url) as http:
        response = await http.post(SIGNUP, json=signup_body("nobody"))
    assert_unavailable(response)


@needs_postgresql
async def test_too_many_connections_is_503(database_url: str, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("a PostgreSQL connection limit")
    assert TEST_DATABASE_URL is not None
    role = f"limited_{uuid.uuid4().hex[:10]}"
    await _admin_execute(
        TEST_DATABASE_URL, f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0'
    )
    try:
        url = make_url(database_url).set(username=role, password=None)
        async with http_on(
            DATABASE_URL=url.render_as_string(hide_password=False)
        ) as http:
            response = await http.post(SIGNUP, json=signup_body("crowded"))
    finally:
        await _admin_execute(TEST_DATABASE_URL, f'DROP ROLE "{role}"')
    assert_unavailable(response)


async def test_pool_timeout_is_503(database_url: str) -> None:
    async with app_and_http(
        DATABASE_URL=database_url, DB_POOL_SIZE=1, DB_POOL_TIMEOUT_SECONDS=0.2
    ) as (app, http):
        headers = await sign_up_and_log_in(http)
        engine = app.state.database.engine
        async with engine.connect() as held:  # the pool's only connection
            await held.execute(text("SELECT 1"))
            busy = await http.get(ITEMS, headers=headers)
        after = await http.get(ITEMS, headers=headers)
    assert_unavailable(busy)
    assert after.status_code == 200


async def test_sqlite_locked_past_the_busy_timeout_is_503(
    database_url: str, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's file lock")
    path = make_url(database_url).database
    assert path
    async with http_on(DATABASE_URL=database_url, SQLITE_BUSY_TIMEOUT_MS=300) as http:
        headers = await sign_up_and_log_in(http)
        # Another process's writer (here: another connection) holds the lock.
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            created = await http.post(ITEMS, json={"title": "t"}, headers=headers)
            signed_up = await http.post(
                SIGNUP, json=signup_body(f"l{uuid.uuid4().hex[:10]}")
            )
        finally:
            other.execute("ROLLBACK")
            other.close()
        again = await http.post(ITEMS, json={"title": "t"}, headers=headers)
    assert_unavailable(created)
    assert_unavailable(signed_up)
    assert again.status_code == 201


async def test_a_writer_in_the_same_process_past_the_busy_timeout_is_503(
    database_url: str, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("the SQLite driver's own queue of writers")
    async with app_and_http(DATABASE_URL=database_url, SQLITE_BUSY_TIMEOUT_MS=300) as (
        app,
        http,
    ):
        headers = await sign_up_and_log_in(http)
        async with app.state.database.engine.begin() as long_writer:
            await long_writer.execute(
                text("UPDATE users SET first_name = first_name WHERE id = 0")
            )
            queued = await http.post(ITEMS, json={"title": "t"}, headers=headers)
        again = await http.post(ITEMS, json={"title": "t"}, headers=headers)
    assert_unavailable(queued)
    assert again.status_code == 201


async def test_a_bad_statement_is_still_a_500(database_url: str) -> None:
    app = create_app(make_settings(DATABASE_URL=database_url))

    async def broken() -> None:
        async with app.state.database.engine.connect() as connection:
            await connection.execute(text("SELEC 1"))

    app.add_api_route("/broken", broken)
    async with AsyncClient(
        transport=ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.get("/broken")
    await app.state.database.dispose()
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "INTERNAL_ERROR"
    assert "Retry-After" not in response.headers
