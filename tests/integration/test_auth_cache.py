"""The access cache: a fill never brings back what a deletion removed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from app.core.cache import AuthCache, MemoryAuthCache, RedisAuthCache
from tests.conftest import TEST_REDIS_URL

ALICE: dict[str, Any] = {"id": 7, "email": "alice@example.com", "is_active": True}


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[AuthCache]:
    if request.param == "memory":
        yield MemoryAuthCache(ttl_seconds=30)
        return
    if TEST_REDIS_URL is None:
        pytest.skip("TEST_REDIS_URL not set")
    redis = Redis.from_url(str(TEST_REDIS_URL), decode_responses=True)  # as the app
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    yield RedisAuthCache(redis, prefix, ttl_seconds=30)
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_a_miss_is_filled_and_then_served(cache: AuthCache) -> None:
    miss = await cache.get(7, "s1")
    await cache.put(ALICE, "s1", miss.generation)

    assert miss.entry is None
    assert (await cache.get(7, "s1")).entry == ALICE
    assert (await cache.get(7, None)).entry == ALICE
    assert (await cache.get(7, "another-session")).entry is None


@pytest.mark.parametrize("change", ["user", "session"])
async def test_a_fill_read_before_a_deletion_is_dropped(
    cache: AuthCache, change: str
) -> None:
    miss = await cache.get(7, "s1")
    # A change commits and deletes its entries while the miss reads the database.
    if change == "user":
        await cache.forget_user(7)
    else:
        await cache.forget_sessions(["s1"])
    await cache.put(ALICE, "s1", miss.generation)

    assert (await cache.get(7, None)).entry is None
    # The next miss reads after the change, and its fill is kept.
    again = await cache.get(7, "s1")
    await cache.put(ALICE, "s1", again.generation)
    assert (await cache.get(7, "s1")).entry == ALICE


async def test_deletions_remove_entries(cache: AuthCache) -> None:
    await cache.put(ALICE, "s1", (await cache.get(7, "s1")).generation)
    await cache.forget_sessions(["s1"])
    assert (await cache.get(7, "s1")).entry is None
    assert (await cache.get(7, None)).entry == ALICE
    await cache.forget_user(7)
    assert (await cache.get(7, None)).entry is None
