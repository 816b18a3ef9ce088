"""Several processes working together: API servers, a worker, Redis, one database.

Real subprocesses on loopback ports, a Redis server the test starts on its own
port (so it can stop it), and a real SMTP server in the test process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis as SyncRedis

from app.database import upgrade_to_head
from tests.conftest import (
    TEST_DATABASE_URL,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.e2e.test_server import free_port, wait_until_up
from tests.helpers import REDIS_SERVER, MailSink, RedisProcess, mail_sink

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,  # starts Redis, servers and workers
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed"),
]
PASSWORD = "Multi-Proc-Pass-1"


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with mail_sink() as running:
        yield running


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[str]:
    """PostgreSQL when the suite has it (several processes share it), else SQLite."""
    if TEST_DATABASE_URL is None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'multi.db'}"
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
        return
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


class Cluster:
    """API servers (and workers, when started) sharing a database and a Redis."""

    def __init__(self, env: dict[str, str], redis: RedisProcess) -> None:
        self.env = env
        self.redis = redis
        self.processes: list[subprocess.Popen[str]] = []
        self.bases: list[str] = []

    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def start_servers(self, count: int) -> None:
        started = []
        for _ in range(count):
            port = free_port()
            started.append(
                (f"http://127.0.0.1:{port}", self._spawn("serve", "--port", str(port)))
            )
        for base, process in started:
            wait_until_up(base, process, timeout=90)  # two cores, many processes
            self.bases.append(base)

    def start_worker(self, name: str = "w1") -> None:
        self._spawn("worker", "--name", name)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.redis.stop()


@pytest.fixture
def servers(database: str, sink: MailSink, tmp_path: Path) -> Iterator[Cluster]:
    """Redis and the environment; the test starts the processes it needs."""
    redis = RedisProcess(tmp_path)
    redis.start()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_"))
        },
        "ENVIRONMENT": "test",
        "SECRET_KEY": "multi-process-test-secret-key-0123456789abcdef",
        "DATABASE_URL": database,
        "REDIS_URL": redis.url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(sink.port),
        "SMTP_TLS": "false",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_AUTH": "1000/minute",
        "RATE_LIMIT_WRITES": "4/minute",
        "OUTBOX_POLL_SECONDS": "0.2",
        "EVENT_HANDLER_TIMEOUT_SECONDS": "10",
        "LOG_LEVEL": "WARNING",
        "STORAGE_DIR": str(tmp_path / "files"),
    }
    running = Cluster(env, redis)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cluster(servers: Cluster) -> tuple[list[str], RedisProcess]:
    """Two API servers and one worker, running."""
    servers.start_servers(2)
    servers.start_worker()
    return servers.bases, servers.redis


def signup(base: str, index: int) -> httpx.Response:
    body = {
        "email": f"user{index}@example.com",
        "username": f"user{index}",
        "password": PASSWORD,
        "confirm_password": PASSWORD,
        "first_name": "Multi",
        "last_name": f"User{index}",
    }
    return httpx.post(f"{base}/api/v1/auth/signup", json=body, timeout=30)


def login(base: str, username: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/api/v1/auth/login",
        data={"username": username, "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def wait_for_mail(sink: MailSink, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.messages) < count and time.monotonic() < deadline:
        time.sleep(0.2)


def test_processes_share_limits_logouts_and_deliver_every_event_once(
    cluster: tuple[list[str], RedisProcess], sink: MailSink
) -> None:
    (a, b), redis = cluster

    # A signup on one process: exactly one welcome email, sent by the worker.
    assert signup(a, 0).status_code == 201
    wait_for_mail(sink, 1)
    time.sleep(1)
    assert [m["To"] for m in sink.messages] == ["user0@example.com"]

    # Rate limits are shared: 4 writes per minute per user, across both processes.
    token = login(b, "user0")["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    codes = [
        httpx.post(
            f"{base}/api/v1/items", json={"title": "t"}, headers=headers
        ).status_code
        for base in (a, b, a, b, a)
    ]
    assert codes == [201, 201, 201, 201, 429]

    # A logout on A is honoured by B at once (B had the user cached in Redis).
    session = login(a, "user0")
    session_headers = {"Authorization": f"Bearer {session['access_token']}"}
    assert httpx.get(f"{b}/api/v1/users/me", headers=session_headers).status_code == 200
    assert (
        httpx.post(f"{a}/api/v1/auth/logout", headers=session_headers).status_code
        == 204
    )
    assert httpx.get(f"{b}/api/v1/users/me", headers=session_headers).status_code == 401

    # Redis goes away while 50 users sign up: the API keeps serving...
    redis.stop()
    statuses = [signup(a if i % 2 else b, i).status_code for i in range(1, 51)]
    assert statuses == [201] * 50
    degraded = httpx.get(f"{a}/ready")
    assert degraded.status_code == 200  # it serves, so it stays in rotation
    assert degraded.json()["status"] == "degraded"
    # ...and once Redis is back, every event is delivered, none twice.
    redis.start()
    wait_for_mail(sink, 51)
    time.sleep(2)  # anything extra would arrive now
    received = Counter(m["To"] for m in sink.messages)
    assert len(received) == 51
    assert set(received.values()) == {1}
    assert httpx.get(f"{a}/ready").json()["status"] == "ready"


def test_events_published_before_redis_lost_its_data_are_all_handled_once(
    servers: Cluster, sink: MailSink
) -> None:
    # No worker yet: the relays publish every signup's event to the stream...
    servers.env["EVENT_REDELIVER_CHECK_SECONDS"] = "1"
    servers.start_servers(2)
    a, b = servers.bases
    assert [signup(a if i % 2 else b, i).status_code for i in range(20)] == [201] * 20
    stream = SyncRedis(port=servers.redis.port)
    deadline = time.monotonic() + 30
    while stream.xlen("app:events") < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stream.xlen("app:events") == 20
    stream.close()
    # ...then Redis restarts without persistence: the stream is gone.
    servers.redis.stop()
    servers.redis.start()
    servers.start_worker()

    wait_for_mail(sink, 20, timeout=60)
    time.sleep(2)  # anything extra would arrive now
    received = Counter(m["To"] for m in sink.messages)
    assert received == Counter(f"user{i}@example.com" for i in range(20))
