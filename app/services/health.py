"""Readiness: can this process reach what it needs to serve requests?"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.database import SchemaCheck

logger = logging.getLogger("app.health")


@dataclass(frozen=True)
class ComponentStatus:
    """The outcome of probing one dependency."""

    name: str
    ok: bool
    detail: str
    """`ok`, `ok (<notes>)`, or why it is down."""
    required: bool = True
    """Whether the instance can serve without it (Redis: yes, degraded)."""


class NotReadyError(Exception):
    """A dependency answered, but not as the instance needs (its message says how)."""


async def _probe(
    name: str,
    check: Callable[[], Awaitable[str | None]],
    probe_timeout: float,
    *,
    required: bool = True,
) -> ComponentStatus:
    """Run `check`; what it returns are notes on a component that is up."""
    try:
        notes = await asyncio.wait_for(check(), probe_timeout)
    except TimeoutError:
        detail = f"no answer within {probe_timeout:g}s"
        return ComponentStatus(name, False, detail, required)
    except NotReadyError as exc:
        return ComponentStatus(name, False, str(exc), required)
    except Exception as exc:  # any failure means "down", whatever the driver
        logger.warning("readiness probe failed", extra={"component": name})
        return ComponentStatus(name, False, type(exc).__name__, required)
    detail = f"ok ({notes})" if notes else "ok"
    return ComponentStatus(name, True, detail, required)


# Settings of Redis that decide whether it keeps the event stream (README).
_DURABILITY_SETTINGS = ("appendonly", "maxmemory-policy")


def _advised(name: str, value: str) -> bool:
    if name == "appendonly":
        return value == "yes"
    # volatile-* policies evict only keys with a TTL, which the stream has not.
    return not value.startswith("allkeys")


async def redis_durability(client: Redis) -> str | None:
    """Notes on settings that can lose events, or None when all are as advised.

    `CONFIG GET` is often disabled on managed Redis: what it does not tell is
    reported as unknown.
    """
    values: dict[str, str | None] = {}
    for name in _DURABILITY_SETTINGS:
        try:
            answer = await client.config_get(name)
        except ResponseError:  # unknown command, or not allowed to this user
            answer = {}
        values[name] = answer.get(name)
    risky = [
        f"{name} {value}"
        for name, value in values.items()
        if value is not None and not _advised(name, value)
    ]
    unknown = [name for name, value in values.items() if value is None]
    notes = []
    if risky:
        notes.append(f"warning: {', '.join(risky)}")
    if unknown:
        notes.append(f"{', '.join(unknown)} unknown")
    return "; ".join(notes) or None


async def check_readiness(
    engine: AsyncEngine,
    schema: SchemaCheck,
    redis_url: str | None,
    probe_timeout: float,
) -> list[ComponentStatus]:
    """Probe the database and, when configured, Redis, each within `probe_timeout`.

    Args:
        engine: The application's engine.
        schema: The migrations' head the database must be at.
        redis_url: Redis URL, or None when the service runs without Redis.
        probe_timeout: Seconds each probe may take.

    Returns:
        One status per component.
    """

    async def database() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            # A database that answers but lacks the tables fails every request.
            problem = await schema.problem(connection)
        if problem is not None:
            raise NotReadyError(problem)

    probes = [_probe("database", database, probe_timeout)]
    if redis_url:
        url = redis_url

        async def redis() -> str | None:
            client = Redis.from_url(
                url, socket_connect_timeout=probe_timeout, decode_responses=True
            )
            try:
                await client.ping()
                return await redis_durability(client)
            finally:
                await client.aclose()

        # Without Redis the API still serves (limits fail open, lockouts and the
        # access check fall back to this process and the database): an instance
        # taken out of rotation for it would turn a Redis outage into a full one.
        probes.append(_probe("redis", redis, probe_timeout, required=False))
    return list(await asyncio.gather(*probes))
