"""Housekeeping deletes what ended more than the retention ago, and nothing else."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta
from typing import Any

from httpx import AsyncClient
from prometheus_client import REGISTRY
from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.main import create_app
from app.models import User
from app.models.auth_session import AuthSession, RefreshToken
from app.models.base import utcnow
from app.models.idempotency import IdempotencyKey
from app.models.outbox import ActionToken, OutboxEvent, ProcessedEvent
from app.services.retention import Pruner
from tests.conftest import bearer, login

DAY = timedelta(days=1)


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


async def _insert(engine: AsyncEngine, model: Any, *rows: dict[str, Any]) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(_table(model)), list(rows))


async def _column(engine: AsyncEngine, model: Any, column: str) -> list[Any]:
    table = _table(model)
    async with engine.connect() as connection:
        result = await connection.execute(select(table.c[column]).order_by(table.c.id))
        return list(result.scalars())


def _event(
    name: str, occurred: datetime, published: datetime | None, **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": name,
        "event_type": "item.created",
        "aggregate_type": "item",
        "aggregate_id": "1",
        "payload": {},
        "occurred_at": occurred,
        "published_at": published,
        "done_at": published,  # handled as it was published, unless `extra` says
        **extra,
    }


def _session(name: str, user: User, now: datetime, **times: datetime) -> dict[str, Any]:
    return {
        "id": name,
        "user_id": user.id,
        "scope": "",
        "created_at": now - 40 * DAY,
        "last_used_at": times.pop("last_used_at", now),
        "expires_at": times.pop("expires_at", now + DAY),
        "revoked_at": times.pop("revoked_at", None),
    }


async def _prune(app: Any, now: datetime, **settings: Any) -> dict[str, int]:
    """One pass at `now`, with the app's settings changed by `settings`."""
    changed = app.state.settings.model_copy(update=settings)
    return await Pruner(app.state.database.sessionmaker, changed).prune(now)


async def _published_long_ago(engine: AsyncEngine, count: int) -> datetime:
    """`count` events published 8 days ago; returns now."""
    now = utcnow()
    old = now - 8 * DAY
    await _insert(
        engine, OutboxEvent, *(_event(f"e{n}", old, old) for n in range(count))
    )
    return now


def _pruned(table: str) -> float:
    return (
        REGISTRY.get_sample_value("housekeeping_rows_deleted_total", {"table": table})
        or 0.0
    )


async def test_events_go_once_published_and_kept_long_enough(
    app: Any, client: AsyncClient, engine: AsyncEngine
) -> None:
    now = utcnow()
    await _insert(
        engine,
        OutboxEvent,
        _event("old-published", now - 30 * DAY, now - 8 * DAY),
        _event("recently-published", now - 30 * DAY, now - 6 * DAY),
        _event("never-published", now - 100 * DAY, None),
        _event("given-up", now - 100 * DAY, None, attempts=99, last_error="boom"),
        # In the stream (or lost by Redis) and never handled: the relay still
        # needs the row to publish it again.
        _event("never-handled", now - 30 * DAY, now - 20 * DAY, done_at=None),
    )
    await _insert(
        engine,
        ProcessedEvent,
        {"handler": "welcome", "event_id": "a", "processed_at": now - 31 * DAY},
        {"handler": "welcome", "event_id": "b", "processed_at": now - 29 * DAY},
    )
    before = _pruned("outbox_events")

    deleted = await _prune(app, now)

    assert deleted["outbox_events"] == 1
    assert deleted["processed_events"] == 1
    assert await _column(engine, OutboxEvent, "event_id") == [
        "recently-published",
        "never-published",
        "given-up",
        "never-handled",
    ]
    assert await _column(engine, ProcessedEvent, "event_id") == ["b"]
    assert _pruned("outbox_events") == before + 1


async def test_ended_sessions_go_with_their_refresh_tokens(
    app: Any, client: AsyncClient, engine: AsyncEngine, alice: User
) -> None:
    now = utcnow()
    idle = timedelta(minutes=app.state.settings.REFRESH_TOKEN_IDLE_TIMEOUT_MINUTES)
    await _insert(
        engine,
        AuthSession,
        _session("revoked-long-ago", alice, now, revoked_at=now - 8 * DAY),
        _session("revoked-lately", alice, now, revoked_at=now - 6 * DAY),
        _session("expired-long-ago", alice, now, expires_at=now - 8 * DAY),
        _session("idle-long-ago", alice, now, last_used_at=now - idle - 8 * DAY),
        _session("idle-lately", alice, now, last_used_at=now - idle - 6 * DAY),
        _session("live", alice, now),
    )
    await _insert(
        engine,
        RefreshToken,
        *(
            {
                "session_id": family,
                "token_hash": secrets.token_hex(32),
                "created_at": now - 40 * DAY,
            }
            for family in ("revoked-long-ago", "live", "live")
        ),
    )

    deleted = await _prune(app, now)

    assert deleted["auth_sessions"] == 3
    assert sorted(await _column(engine, AuthSession, "id")) == [
        "idle-lately",
        "live",
        "revoked-lately",
    ]
    # The live session keeps its rotated tokens (reuse detection needs them).
    assert await _column(engine, RefreshToken, "session_id") == ["live", "live"]


async def test_used_or_expired_email_tokens_and_stale_idempotency_keys_go(
    app: Any, client: AsyncClient, engine: AsyncEngine, alice: User
) -> None:
    now = utcnow()
    token = {
        "user_id": alice.id,
        "purpose": "password_reset",
        "created_at": now - 9 * DAY,
    }
    await _insert(
        engine,
        ActionToken,
        {
            **token,
            "token_hash": "used",
            "expires_at": now + DAY,
            "used_at": now - 8 * DAY,
        },
        {
            **token,
            "token_hash": "expired",
            "expires_at": now - 8 * DAY,
            "used_at": None,
        },
        {
            **token,
            "token_hash": "expired-lately",
            "expires_at": now - 6 * DAY,
            "used_at": None,
        },
        {**token, "token_hash": "usable", "expires_at": now + DAY, "used_at": None},
    )
    ttl = timedelta(hours=app.state.settings.IDEMPOTENCY_TTL_HOURS)
    key = {"user_id": alice.id, "scope": "items.create", "request_hash": "h"}
    key |= {"status_code": 201, "response_body": {}}
    await _insert(
        engine,
        IdempotencyKey,
        {**key, "key": "stale", "created_at": now - ttl - timedelta(minutes=1)},
        {**key, "key": "fresh", "created_at": now - ttl + timedelta(minutes=1)},
    )

    deleted = await _prune(app, now)

    assert deleted["action_tokens"] == 2
    assert deleted["idempotency_keys"] == 1
    assert await _column(engine, ActionToken, "token_hash") == [
        "expired-lately",
        "usable",
    ]
    assert await _column(engine, IdempotencyKey, "key") == ["fresh"]


async def test_a_backlog_is_deleted_in_bounded_batches(
    app: Any, client: AsyncClient, engine: AsyncEngine
) -> None:
    now = await _published_long_ago(engine, 5)

    deleted = await _prune(app, now, PRUNE_BATCH_SIZE=2)

    assert deleted["outbox_events"] == 5
    assert await _column(engine, OutboxEvent, "event_id") == []


async def test_passes_running_at_once_share_the_work(
    app: Any, client: AsyncClient, engine: AsyncEngine
) -> None:
    # Every API process and worker prunes: their passes may overlap.
    now = await _published_long_ago(engine, 40)

    passes = await asyncio.gather(
        *(_prune(app, now, PRUNE_BATCH_SIZE=3) for _ in range(3))
    )

    assert sum(deleted["outbox_events"] for deleted in passes) == 40
    assert await _column(engine, OutboxEvent, "event_id") == []


async def test_pruning_never_touches_a_session_in_use(
    app: Any, client: AsyncClient, alice: User
) -> None:
    kept = await login(client, "alice")
    ended = await login(client, "alice")
    logout = await client.post(
        "/api/v1/auth/logout", headers=bearer(ended["access_token"])
    )
    assert logout.status_code == 204, logout.text
    # A week and a day later (the live one idles out only after 7 + 7 days).
    later = utcnow() + 8 * DAY
    deleted = await _prune(app, later)
    assert deleted["auth_sessions"] == 1

    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": kept["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.text
    sessions = await client.get(
        "/api/v1/auth/sessions", headers=bearer(refreshed.json()["access_token"])
    )
    assert len(sessions.json()["data"]) == 1
    gone = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": ended["refresh_token"]}
    )
    assert gone.status_code == 401
    # Its access token was refused at logout and still is, with no session row left.
    me = await client.get("/api/v1/users/me", headers=bearer(ended["access_token"]))
    assert me.status_code == 401


async def test_the_service_prunes_in_the_background(
    app: Any, client: AsyncClient, engine: AsyncEngine
) -> None:
    old = utcnow() - 8 * DAY
    await _insert(engine, OutboxEvent, _event("old", old, old))
    settings = app.state.settings.model_copy(update={"PRUNE_INTERVAL_SECONDS": 0.05})
    service = create_app(settings)
    async with service.router.lifespan_context(service):
        assert await _emptied(engine), "no pass at start-up"
        await _insert(engine, OutboxEvent, _event("later", old, old))
        assert await _emptied(engine), "no pass after the interval"
    await service.state.database.dispose()


async def _emptied(engine: AsyncEngine) -> bool:
    for _ in range(100):
        if not await _column(engine, OutboxEvent, "event_id"):
            return True
        await asyncio.sleep(0.05)
    return False
