"""/metrics, and the in-process rate limiter."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from httpx import ASGITransport, AsyncClient, Response
from redis.asyncio import Redis

from app.main import create_app
from app.models import User
from tests.conftest import (
    DEFAULT_PASSWORD,
    TEST_REDIS_URL,
    bearer,
    login,
    make_settings,
    make_user,
    truncate_all,
)


@asynccontextmanager
async def app_client(
    database_url: str, **settings: Any
) -> AsyncIterator[tuple[Any, AsyncClient]]:
    app = create_app(make_settings(DATABASE_URL=database_url, **settings))
    await truncate_all(app.state.database.engine)
    transport = ASGITransport(app=app, client=("192.0.2.77", 999))
    async with AsyncClient(transport=transport, base_url="http://t") as http:
        yield app, http
    await app.state.database.dispose()


async def test_metrics_expose_requests_outbox_and_email(
    client: AsyncClient, alice: User
) -> None:
    token = (await login(client, "alice"))["access_token"]
    await client.get("/api/v1/users/me", headers=bearer(token))
    await client.post("/api/v1/items", json={"title": "m"}, headers=bearer(token))

    text = (await client.get("/metrics")).text

    assert (
        'http_requests_total{method="GET",route="/api/v1/users/me",status="200"}'
        in text
    )
    assert "http_request_duration_seconds_bucket" in text
    assert "outbox_backlog_events 2.0" in text  # alice's user.created + item.created
    assert "outbox_oldest_event_age_seconds" in text
    assert "email_circuit_breaker_open 0.0" in text
    assert "db_pool_connections_in_use" in text
    assert "events_handled_total" in text or "events_failed_total" in text


async def test_metrics_can_require_a_token(database_url: str) -> None:
    async with app_client(database_url, METRICS_TOKEN="scrape-secret-123") as (_, http):
        denied = await http.get("/metrics")
        allowed = await http.get("/metrics", headers=bearer("scrape-secret-123"))
    assert denied.status_code == 401
    assert allowed.status_code == 200


async def test_metrics_can_be_turned_off(database_url: str) -> None:
    async with app_client(database_url, METRICS_ENABLED=False) as (_, http):
        assert (await http.get("/metrics")).status_code == 404


async def test_auth_routes_are_limited_per_ip(database_url: str) -> None:
    async with app_client(
        database_url, RATE_LIMIT_ENABLED=True, RATE_LIMIT_AUTH="2/minute"
    ) as (
        app,
        http,
    ):
        await make_user(app, "ipuser")
        form = {"username": "ipuser", "password": DEFAULT_PASSWORD}
        first = await http.post("/api/v1/auth/login", data=form)
        second = await http.post("/api/v1/auth/login", data=form)
        third = await http.post("/api/v1/auth/login", data=form)
        health = await http.get("/health")
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["ratelimit-limit"] == "2"
    assert third.json()["error"]["code"] == "RATE_LIMITED"
    assert "retry-after" in third.headers
    assert health.status_code == 200  # only the auth routes are limited by IP


async def test_writes_are_limited_per_user(database_url: str) -> None:
    async with app_client(
        database_url, RATE_LIMIT_ENABLED=True, RATE_LIMIT_WRITES="3/minute"
    ) as (app, http):
        await make_user(app, "writer")
        await make_user(app, "other")
        writer = (await login(http, "writer"))["access_token"]
        other = (await login(http, "other"))["access_token"]
        codes = [
            (
                await http.post(
                    "/api/v1/items", json={"title": f"{i}"}, headers=bearer(writer)
                )
            ).status_code
            for i in range(4)
        ]
        reads = await http.get("/api/v1/items", headers=bearer(writer))
        someone_else = await http.post(
            "/api/v1/items", json={"title": "x"}, headers=bearer(other)
        )
    assert codes == [201, 201, 201, 429]
    assert reads.status_code == 200  # reads are not writes
    assert someone_else.status_code == 201  # the limit is per user


async def test_a_used_up_write_budget_still_lets_the_owner_change_password(
    database_url: str,
) -> None:
    async with app_client(
        database_url, RATE_LIMIT_ENABLED=True, RATE_LIMIT_WRITES="2/minute"
    ) as (app, http):
        await make_user(app, "owner")
        token = (await login(http, "owner"))["access_token"]
        spent = [
            (
                await http.post(
                    "/api/v1/items", json={"title": "t"}, headers=bearer(token)
                )
            ).status_code
            for _ in range(3)
        ]
        changed = await http.post(
            "/api/v1/users/me/password",
            json={
                "current_password": DEFAULT_PASSWORD,
                "new_password": "Taken-Back-42",
                "confirm_password": "Taken-Back-42",
            },
            headers=bearer(token),
        )
    assert spent == [201, 201, 429]
    assert changed.status_code == 204, changed.text


async def test_disabled_limits_never_refuse(client: AsyncClient, alice: User) -> None:
    for _ in range(30):
        await login(client, "alice")


async def test_a_hung_redis_costs_a_timeout_now_and_then_not_on_every_call(
    database_url: str,
) -> None:
    # A Redis that accepts connections and never answers (a frozen server).
    async def never_answer(
        reader: asyncio.StreamReader, _: asyncio.StreamWriter
    ) -> None:
        await reader.read()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with app_client(
            database_url,
            REDIS_URL=f"redis://127.0.0.1:{port}/0",
            RATE_LIMIT_ENABLED=True,
        ) as (app, http):
            await make_user(app, "patient")
            token = (await login(http, "patient"))["access_token"]  # waits once
            started = time.monotonic()
            answers = [
                await http.get("/api/v1/users/me", headers=bearer(token))
                for _ in range(5)
            ]
            elapsed = time.monotonic() - started
            await app.state.redis.aclose()
    finally:
        server.close()

    assert [answer.status_code for answer in answers] == [200] * 5
    # Each call used to wait out the 2 s socket timeout: 5 requests, 20 s.
    assert elapsed < 2.0


@asynccontextmanager
async def limited_client(
    database_url: str, **settings: Any
) -> AsyncIterator[tuple[Any, AsyncClient]]:
    """An app with rate limits on: in Redis when TEST_REDIS_URL is set, else memory."""
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    redis_settings = (
        {"REDIS_URL": TEST_REDIS_URL, "REDIS_KEY_PREFIX": prefix}
        if TEST_REDIS_URL
        else {}
    )
    try:
        async with app_client(
            database_url, RATE_LIMIT_ENABLED=True, **redis_settings, **settings
        ) as (app, http):
            yield app, http
            if app.state.redis is not None:
                await app.state.redis.aclose()
    finally:
        if TEST_REDIS_URL:
            redis = Redis.from_url(TEST_REDIS_URL)
            keys = [key async for key in redis.scan_iter(f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()


def _limit_headers(response: Response) -> tuple[str, int, int]:
    """(Limit, Remaining, Reset) of a response; KeyError if one is missing."""
    headers = response.headers
    return (
        headers["ratelimit-limit"],
        int(headers["ratelimit-remaining"]),
        int(headers["ratelimit-reset"]),
    )


async def test_every_limited_response_carries_the_ratelimit_headers(
    database_url: str, signup_payload: dict[str, Any]
) -> None:
    # A day-long window: no window boundary inside the test, so each hit costs one.
    async with limited_client(
        database_url, RATE_LIMIT_AUTH="50/day", RATE_LIMIT_WRITES="40/day"
    ) as (_, http):
        auth = [
            await http.post("/api/v1/auth/signup", json=signup_payload),
            await http.post(
                "/api/v1/auth/login",
                data={"username": "ada", "password": signup_payload["password"]},
            ),
            await http.post(
                "/api/v1/auth/login", data={"username": "ada", "password": "wrong-1A"}
            ),
        ]
        tokens = auth[1].json()
        auth.append(
            await http.post(
                "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
        )
        token = bearer(auth[-1].json()["access_token"])
        created = await http.post("/api/v1/items", json={"title": "t"}, headers=token)
        item = f"/api/v1/items/{created.json()['data']['id']}"
        writes = [
            created,
            await http.patch(item, json={"title": "u"}, headers=token),
            await http.patch(
                "/api/v1/users/me", json={"first_name": "Augusta"}, headers=token
            ),
            await http.post("/api/v1/items", json={"title": ""}, headers=token),
            await http.patch(
                "/api/v1/items/999999", json={"title": "u"}, headers=token
            ),
        ]

    assert [r.status_code for r in auth] == [201, 200, 401, 200]
    assert [r.status_code for r in writes] == [201, 200, 200, 422, 404]
    auth_limits = [_limit_headers(r) for r in auth]
    write_limits = [_limit_headers(r) for r in writes]
    assert [(limit, left) for limit, left, _ in auth_limits] == [
        ("50", 49),
        ("50", 48),
        ("50", 47),
        ("50", 46),
    ]
    assert [(limit, left) for limit, left, _ in write_limits] == [
        ("40", 39),
        ("40", 38),
        ("40", 37),
        ("40", 36),
        ("40", 35),
    ]
    assert all(0 <= reset <= 86400 for *_, reset in auth_limits + write_limits)
