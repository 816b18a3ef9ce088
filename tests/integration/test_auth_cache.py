"""The access cache: a fill never brings back what a deletion removed, even when
Redis loses the deletion, restarts without its counter or fails over."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.cache import (
    CLOCK_SKEW_MARGIN_SECONDS,
    AuthCache,
    MemoryAuthCache,
    RedisAuthCache,
)
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
    shared = RedisAuthCache(redis, prefix, ttl_seconds=30)
    # As in a running deployment, the deletion counter exists (a change made
    # it); what happens before it does is tested on its own below.
    await shared.forget(None, ["warm-up"])
    yield shared
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_a_miss_is_filled_and_then_served(cache: AuthCache) -> None:
    miss = await cache.get(7, "s1")
    await cache.put(ALICE, "s1", miss)

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
        await cache.forget(7, [])
    else:
        await cache.forget(None, ["s1"])
    await cache.put(ALICE, "s1", miss)

    assert (await cache.get(7, None)).entry is None
    # The next miss reads after the change, and its fill is kept.
    again = await cache.get(7, "s1")
    await cache.put(ALICE, "s1", again)
    assert (await cache.get(7, "s1")).entry == ALICE


async def test_deletions_remove_entries(cache: AuthCache) -> None:
    await cache.put(ALICE, "s1", await cache.get(7, "s1"))
    await cache.forget(None, ["s1"])
    assert (await cache.get(7, "s1")).entry is None
    assert (await cache.get(7, None)).entry == ALICE
    await cache.forget(7, [])
    assert (await cache.get(7, None)).entry is None


@pytest.fixture
async def redis_cache() -> AsyncIterator[RedisAuthCache]:
    if TEST_REDIS_URL is None:
        pytest.skip("TEST_REDIS_URL not set")
    redis = Redis.from_url(str(TEST_REDIS_URL), decode_responses=True)
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    shared = RedisAuthCache(redis, prefix, ttl_seconds=30)
    await shared.forget(None, ["warm-up"])
    yield shared
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_a_late_fill_expires_a_ttl_after_its_lookup_began(
    redis_cache: RedisAuthCache,
) -> None:
    # The fill reaches Redis 29.5 s after its lookup (queued behind a stall):
    # what it read may predate a revocation whose deletion was lost, so it
    # must not live a whole TTL from now.
    miss = await redis_cache.get(7, "s1")
    await redis_cache.put(ALICE, "s1", replace(miss, read_at=miss.read_at - 29.5))

    remaining_ms = await redis_cache.redis.pttl(f"{redis_cache.prefix}user:7")
    assert 0 < remaining_ms <= 600


async def test_no_lookup_made_before_redis_lost_its_counter_can_fill_after(
    redis_cache: RedisAuthCache,
) -> None:
    before = await redis_cache.get(7, "s1")
    # Redis restarts without its data, then a revocation lands on the new one.
    await redis_cache.redis.delete(redis_cache.generation_key)
    await redis_cache.forget(7, ["s1"])
    await redis_cache.put(ALICE, "s1", before)

    assert (await redis_cache.get(7, None)).entry is None
    # The counter restarted where no earlier lookup could have seen it.
    assert int(await redis_cache.redis.get(redis_cache.generation_key)) > 1 << 40


async def test_the_first_fill_after_the_counter_was_lost_is_dropped(
    redis_cache: RedisAuthCache,
) -> None:
    await redis_cache.redis.delete(redis_cache.generation_key)
    first = await redis_cache.get(7, "s1")
    await redis_cache.put(ALICE, "s1", first)
    assert (await redis_cache.get(7, "s1")).entry is None

    second = await redis_cache.get(7, "s1")
    await redis_cache.put(ALICE, "s1", second)
    assert (await redis_cache.get(7, "s1")).entry == ALICE


REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _redis_server(port: int, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
    assert REDIS_SERVER is not None
    return subprocess.Popen(
        [
            REDIS_SERVER,
            *("--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(directory), *extra),
        ],
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture
async def primary_and_replica(
    tmp_path: Path,
) -> AsyncIterator[tuple[Redis, Redis, Any]]:
    """A private Redis with one replica; the replica's process can be paused."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed")
    primary_port, replica_port = _free_port(), _free_port()
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    processes = [
        # Their own folders: a replica's sync writes an RDB file there.
        _redis_server(primary_port, tmp_path / "primary"),
        _redis_server(
            replica_port,
            tmp_path / "replica",
            "--replicaof",
            "127.0.0.1",
            str(primary_port),
        ),
    ]
    primary = Redis(port=primary_port, decode_responses=True, socket_timeout=2)
    replica = Redis(port=replica_port, decode_responses=True, socket_timeout=2)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                info = await replica.info("replication")
                if info.get("master_link_status") == "up":
                    break
            except (RedisConnectionError, OSError):
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the replica never synchronised")
        yield primary, replica, processes[1]
    finally:
        for process in processes:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(timeout=10)
        await primary.aclose()
        await replica.aclose()


async def test_a_revocation_is_confirmed_only_once_replicas_have_it(
    primary_and_replica: tuple[Redis, Redis, Any],
) -> None:
    primary, replica, replica_process = primary_and_replica
    cache = RedisAuthCache(primary, "failover:", ttl_seconds=1)
    await cache.forget(None, ["warm-up"])
    await cache.put(ALICE, "s1", await cache.get(7, "s1"))

    started = time.monotonic()
    await cache.forget(7, [])
    confirmed_in = time.monotonic() - started
    assert await replica.get("failover:auth:user:7") is None  # a failover keeps it
    assert confirmed_in < 1  # the replica acknowledged: no waiting out

    # A replica that cannot acknowledge (paused) might be promoted without the
    # deletion: the revocation waits until every older entry has expired.
    await cache.put(ALICE, "s1", await cache.get(7, "s1"))
    replica_process.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    await cache.forget(7, [])
    assert time.monotonic() - started >= cache.ttl + CLOCK_SKEW_MARGIN_SECONDS
    replica_process.send_signal(signal.SIGCONT)
