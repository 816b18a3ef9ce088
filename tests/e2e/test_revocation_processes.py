"""Revocations under Redis faults, with real processes: `serve --workers 2`, a
private redis-server the test pauses (SIGSTOP), stops and restarts from its
append-only file, and the old access token tried on every worker afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.backends import FailFastRedis
from tests.e2e import test_multiprocess
from tests.e2e.test_server import free_port, wait_until_up
from tests.helpers import REDIS_SERVER, RedisProcess

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed"),
]
PASSWORD = "Revoke-Proc-Pass-1"
database = test_multiprocess.database  # the same shared database as there
CACHE_TTL = 15  # long enough that only a correct revocation explains a 401


@pytest.fixture
def service(database: str, tmp_path: Path) -> Iterator[tuple[str, RedisProcess]]:
    """`serve --workers 2` on one port, with the private Redis."""
    # An append-only file, so that a restart brings its data back.
    redis = RedisProcess(tmp_path, ["--appendonly", "yes", "--appendfsync", "always"])
    redis.start()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_"))
        },
        "ENVIRONMENT": "test",
        "SECRET_KEY": "revocation-process-test-secret-0123456789abcdef",
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "AUTH_CACHE_TTL_SECONDS": str(CACHE_TTL),
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "STORAGE_DIR": str(tmp_path / "files"),
        "MAIL_DIR": str(tmp_path / "mail"),
    }
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, process)
        yield base, redis
    finally:
        try:
            process.terminate()
            process.wait(timeout=30)
        finally:
            redis.stop()  # even when the server would not stop


def _session(base: str, username: str) -> dict[str, str]:
    body = {
        "email": f"{username}@example.com",
        "username": username,
        "password": PASSWORD,
        "confirm_password": PASSWORD,
        "first_name": "Rev",
        "last_name": "Oked",
    }
    assert httpx.post(f"{base}/api/v1/auth/signup", json=body, timeout=30).is_success
    response = httpx.post(
        f"{base}/api/v1/auth/login",
        data={"username": username, "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    # Cached in Redis from here on, for every worker.
    assert httpx.get(f"{base}/api/v1/users/me", headers=headers).status_code == 200
    return headers


def _in_background(call: Callable[[], httpx.Response]) -> Callable[[], httpx.Response]:
    """Start `call` in a thread; the returned function waits for its answer."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    thread.start()

    def result() -> httpx.Response:
        thread.join(timeout=60)
        assert outcome, "the request did not finish"
        response: httpx.Response = outcome[0]
        return response

    return result


def _answers_afterwards(base: str, headers: dict[str, str]) -> set[int]:
    """What the old token gets, at once and once every worker trusts Redis again.

    A worker that saw Redis fail asks the database for a few seconds
    (`FailFastRedis`); the stale entries would show only after that.
    Fresh connections spread the requests over the workers.
    """
    statuses = _probe(base, headers)
    time.sleep(FailFastRedis.retry_after_seconds + 1)
    return statuses | _probe(base, headers)


def _probe(base: str, headers: dict[str, str]) -> set[int]:
    statuses = {
        httpx.get(f"{base}/api/v1/users/me", headers=headers, timeout=30).status_code
        for _ in range(12)
    }
    statuses |= {
        httpx.post(
            f"{base}/api/v1/items", json={"title": "t"}, headers=headers, timeout=30
        ).status_code
        for _ in range(4)
    }
    return statuses


def test_a_logout_while_redis_is_paused_holds_on_every_worker(
    service: tuple[str, RedisProcess],
) -> None:
    base, redis = service
    headers = _session(base, "paused")

    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    logout = _in_background(
        lambda: httpx.post(f"{base}/api/v1/auth/logout", headers=headers, timeout=60)
    )
    time.sleep(3)  # past the client's socket timeout: Redis counts as down
    redis.process.send_signal(signal.SIGCONT)

    assert logout().status_code == 204
    assert _answers_afterwards(base, headers) == {401}


def test_a_logout_all_while_redis_is_down_holds_after_it_restarts_with_its_data(
    service: tuple[str, RedisProcess],
) -> None:
    base, redis = service
    headers = _session(base, "crashed")

    redis.stop()  # the cached entry is in its append-only file
    logout_all = _in_background(
        lambda: httpx.post(
            f"{base}/api/v1/auth/logout-all", headers=headers, timeout=60
        )
    )
    time.sleep(1)
    redis.start()  # ...and back with it

    assert logout_all().status_code == 204
    assert _answers_afterwards(base, headers) == {401}


def test_a_logout_while_redis_stays_down_holds_when_its_data_comes_back(
    service: tuple[str, RedisProcess],
) -> None:
    base, redis = service
    headers = _session(base, "late")

    redis.stop()
    answer = httpx.post(f"{base}/api/v1/auth/logout", headers=headers, timeout=60)
    redis.start()  # after the answer, with the entry from before the logout

    assert answer.status_code == 204
    assert _answers_afterwards(base, headers) == {401}
