"""A revocation holds in every process from its answer on, whatever Redis did.

Two apps share one database and one Redis, as two API processes do; Redis is
reached through a proxy the test stalls or cuts (a real fault on a real
server, no mock). The other process has the user cached in Redis when the
revocation happens; once the revocation has answered, that process must refuse
the old token at once, not when the cached entry happens to expire.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import insert

from app.core.tokens import hash_refresh_token
from app.main import create_app
from app.models.base import utcnow
from app.models.outbox import ActionToken
from app.models.user import User
from tests.conftest import (
    DEFAULT_PASSWORD,
    TEST_REDIS_URL,
    bearer,
    login,
    make_settings,
    make_user,
    truncate_all,
)
from tests.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.skipif(TEST_REDIS_URL is None, reason="TEST_REDIS_URL not set")

CACHE_TTL = 5.0  # longer than the faults below: an entry must not just expire
SOCKET_TIMEOUT = 0.3  # a stall longer than this makes a Redis call fail
ME = "/api/v1/users/me"


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    target = urlparse(str(TEST_REDIS_URL))
    with tcp_proxy(target.hostname or "127.0.0.1", target.port or 6379) as running:
        yield running


@pytest.fixture
async def processes(
    database_url: str, proxy: TcpProxy, tmp_path: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """Two apps ("processes") on one database and one Redis behind the proxy."""
    db_index = urlparse(str(TEST_REDIS_URL)).path.lstrip("/") or "0"
    prefix = f"test:{secrets.token_hex(5)}:"
    settings = make_settings(
        DATABASE_URL=database_url,
        REDIS_URL=f"redis://127.0.0.1:{proxy.port}/{db_index}",
        REDIS_KEY_PREFIX=prefix,
        AUTH_CACHE_TTL_SECONDS=CACHE_TTL,
        REDIS_SOCKET_TIMEOUT_SECONDS=SOCKET_TIMEOUT,
        STORAGE_DIR=str(tmp_path),
        MAIL_DIR=str(tmp_path / "mail"),
    )
    apps = [create_app(settings), create_app(settings)]
    await truncate_all(apps[0].state.database.engine)
    yield apps[0], apps[1]
    for app in apps:
        await app.state.redis.aclose()
        await app.state.database.dispose()


def http(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.9", 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


Revocation = Callable[[httpx.AsyncClient, dict[str, Any], User], Awaitable[int]]


async def logout(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    return (await a.post("/api/v1/auth/logout", headers=ctx["alice"])).status_code


async def logout_all(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    return (await a.post("/api/v1/auth/logout-all", headers=ctx["other"])).status_code


async def session_delete(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    path = f"/api/v1/auth/sessions/{ctx['alice_session']}"
    return (await a.delete(path, headers=ctx["other"])).status_code


async def password_change(
    a: httpx.AsyncClient, ctx: dict[str, Any], alice: User
) -> int:
    body = {
        "current_password": DEFAULT_PASSWORD,
        "new_password": "Brand-New-Pass-9",
        "confirm_password": "Brand-New-Pass-9",
    }
    response = await a.post(f"{ME}/password", json=body, headers=ctx["other"])
    return response.status_code


async def password_reset(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    token = secrets.token_urlsafe(32)
    async with ctx["engine"].begin() as connection:
        await connection.execute(
            insert(ActionToken).values(
                user_id=alice.id,
                purpose="password_reset",
                token_hash=hash_refresh_token(token),
                created_at=utcnow(),
                expires_at=utcnow() + timedelta(minutes=10),
            )
        )
    body = {
        "token": token,
        "new_password": "Brand-New-Pass-9",
        "confirm_password": "Brand-New-Pass-9",
    }
    response = await a.post("/api/v1/auth/password-reset/confirm", json=body)
    return response.status_code


async def role_change(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    path = f"/api/v1/users/{alice.id}"
    response = await a.patch(path, json={"role": "moderator"}, headers=ctx["admin"])
    return response.status_code


async def deactivation(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    path = f"/api/v1/users/{alice.id}"
    return (await a.delete(path, headers=ctx["admin"])).status_code


async def hard_delete(a: httpx.AsyncClient, ctx: dict[str, Any], alice: User) -> int:
    path = f"/api/v1/users/{alice.id}?hard=true"
    return (await a.delete(path, headers=ctx["admin"])).status_code


REVOCATIONS: list[Revocation] = [
    logout,
    logout_all,
    session_delete,
    password_change,
    password_reset,
    role_change,
    deactivation,
    hard_delete,
]


async def _setup(
    a_app: Any, a: httpx.AsyncClient, b: httpx.AsyncClient
) -> tuple[User, dict[str, Any]]:
    alice = await make_user(a_app, "alice")
    await make_user(a_app, "root", role="admin")
    token = (await login(a, "alice"))["access_token"]
    me = await a.get("/api/v1/auth/sessions", headers=bearer(token))
    ctx: dict[str, Any] = {
        "alice": bearer(token),
        "other": bearer((await login(a, "alice"))["access_token"]),
        "admin": bearer((await login(a, "root"))["access_token"]),
        "engine": a_app.state.database.engine,
    }
    ctx["alice_session"] = next(s["id"] for s in me.json()["data"] if s.get("current"))
    # The other process answers from Redis from now on.
    assert (await b.get(ME, headers=ctx["alice"])).status_code == 200
    return alice, ctx


async def _refused_everywhere(
    clients: tuple[httpx.AsyncClient, ...], headers: dict[str, str]
) -> list[int]:
    return [
        (await client.get(ME, headers=headers)).status_code for client in clients
    ] + [
        (
            await client.post("/api/v1/items", json={"title": "x"}, headers=headers)
        ).status_code
        for client in clients
    ]


@pytest.mark.parametrize("revoke", REVOCATIONS, ids=lambda r: r.__name__)
async def test_a_revocation_whose_deletion_redis_lost_holds_when_redis_resumes(
    processes: tuple[Any, Any], proxy: TcpProxy, revoke: Revocation
) -> None:
    a_app, b_app = processes
    async with http(a_app) as a, http(b_app) as b:
        alice, ctx = await _setup(a_app, a, b)

        proxy.stall()  # as SIGSTOP: the deletion times out and is lost
        revoking = asyncio.create_task(revoke(a, ctx, alice))
        await asyncio.sleep(4 * SOCKET_TIMEOUT)
        proxy.resume()  # Redis answers again, the old entries still in it
        status = await revoking

        assert 200 <= status < 300
        assert await _refused_everywhere((b, a), ctx["alice"]) == [401] * 4


async def test_a_logout_that_redis_never_confirms_answers_after_the_cache_ttl(
    processes: tuple[Any, Any], proxy: TcpProxy
) -> None:
    a_app, b_app = processes
    async with http(a_app) as a, http(b_app) as b:
        alice, ctx = await _setup(a_app, a, b)

        proxy.stall()
        started = time.monotonic()
        status = await logout(a, ctx, alice)
        took = time.monotonic() - started
        proxy.resume()

        assert status == 204
        # Unconfirmed: it waited until every entry from before it had expired.
        assert took >= CACHE_TTL
        assert await _refused_everywhere((b, a), ctx["alice"]) == [401] * 4


@pytest.fixture
async def partitioned(
    database_url: str, proxy: TcpProxy, tmp_path: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """Process A reaches Redis through the proxy (to be cut off), B directly."""
    redis_url = urlparse(str(TEST_REDIS_URL))
    db_index = redis_url.path.lstrip("/") or "0"
    common: dict[str, Any] = {
        "DATABASE_URL": database_url,
        "REDIS_KEY_PREFIX": f"test:{secrets.token_hex(5)}:",
        "AUTH_CACHE_TTL_SECONDS": CACHE_TTL,
        "REDIS_SOCKET_TIMEOUT_SECONDS": SOCKET_TIMEOUT,
        "STORAGE_DIR": str(tmp_path),
        "MAIL_DIR": str(tmp_path / "mail"),
    }
    a_app = create_app(
        make_settings(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/{db_index}", **common)
    )
    b_app = create_app(make_settings(REDIS_URL=str(TEST_REDIS_URL), **common))
    await truncate_all(a_app.state.database.engine)
    yield a_app, b_app
    for app in (a_app, b_app):
        await app.state.redis.aclose()
        await app.state.database.dispose()


async def repeat_logout(
    client: httpx.AsyncClient, ctx: dict[str, Any], alice: User
) -> int:
    return await logout(client, ctx, alice)


async def repeat_deactivation(
    client: httpx.AsyncClient, ctx: dict[str, Any], alice: User
) -> int:
    return await deactivation(client, ctx, alice)


async def repeat_role_change(
    client: httpx.AsyncClient, ctx: dict[str, Any], alice: User
) -> int:
    return await role_change(client, ctx, alice)


@pytest.mark.parametrize(
    "revoke",
    [repeat_logout, repeat_deactivation, repeat_role_change],
    ids=lambda r: r.__name__,
)
async def test_a_repeated_revocation_holds_while_the_first_ones_deletion_is_pending(
    partitioned: tuple[Any, Any], proxy: TcpProxy, revoke: Revocation
) -> None:
    # A double-clicked logout, a retry after a timeout, two admins at once:
    # the repeat changes no row, yet its 2xx must hold as much as the first.
    a_app, b_app = partitioned
    async with http(a_app) as a, http(b_app) as b:
        alice, ctx = await _setup(a_app, a, b)

        proxy.stall()  # A cannot reach Redis: its deletion is pending
        first = asyncio.create_task(revoke(a, ctx, alice))
        await asyncio.sleep(4 * SOCKET_TIMEOUT)  # A has committed by now
        second = await revoke(b, ctx, alice)
        after = (await b.get(ME, headers=ctx["alice"])).status_code
        proxy.resume()

        assert 200 <= second < 300
        assert after == 401
        assert 200 <= await first < 300
