"""A real server process whose PostgreSQL goes away and comes back.

`python -m app serve` reaches PostgreSQL through a TCP proxy in the test; the
test cuts the proxy (open links reset, new ones refused), then restores it:
503 with Retry-After meanwhile, 2xx again after, with no restart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.database import upgrade_to_head
from tests.conftest import (
    TEST_DATABASE_URL,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.e2e.test_server import free_port, wait_until_up
from tests.tcp_proxy import tcp_proxy

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Outage-Passw0rd"
pytestmark = pytest.mark.skipif(
    TEST_DATABASE_URL is None, reason="TEST_DATABASE_URL not set"
)


@pytest.fixture
async def postgresql() -> AsyncIterator[str]:
    """A migrated PostgreSQL database of its own."""
    assert TEST_DATABASE_URL is not None
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


def signup(base: str) -> httpx.Response:
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "username": name}
    body |= {"password": PASSWORD, "confirm_password": PASSWORD}
    body |= {"first_name": "Out", "last_name": "Age"}
    return httpx.post(f"{base}/api/v1/auth/signup", json=body, timeout=30)


def the_three(base: str, headers: dict[str, str]) -> list[httpx.Response]:
    items = f"{base}/api/v1/items"
    return [
        httpx.post(items, json={"title": "t"}, headers=headers, timeout=30),
        httpx.get(items, headers=headers, timeout=30),
        signup(base),
    ]


def log_in(base: str, username: str) -> dict[str, str]:
    tokens = httpx.post(
        f"{base}/api/v1/auth/login",
        data={"username": username, "password": PASSWORD},
        timeout=30,
    )
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


def test_server_answers_503_while_postgresql_is_cut_off_then_recovers(
    postgresql: str, tmp_path: Path
) -> None:
    url = make_url(postgresql)
    with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port)
        port = free_port()
        env: dict[str, Any] = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("DATABASE_", "REDIS_"))
            },
            "ENVIRONMENT": "test",
            "SECRET_KEY": "outage-test-secret-key-0123456789abcdefghij",
            "DATABASE_URL": through.render_as_string(hide_password=False),
            "RATE_LIMIT_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "STORAGE_DIR": str(tmp_path / "files"),
            "MAIL_DIR": str(tmp_path / "mail"),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(base, process)
            first = signup(base)
            assert first.status_code == 201, first.text
            headers = log_in(base, first.json()["data"]["username"])

            proxy.cut()
            during = the_three(base, headers)
            proxy.restore()
            after = the_three(base, headers)
        finally:
            process.terminate()
            output, _ = process.communicate(timeout=30)

    for response in during:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert int(response.headers["Retry-After"]) > 0
    assert [response.status_code for response in after] == [201, 200, 201]
    assert after[1].json()["data"]["total"] == 1
    # An outage is a warning line per request, not an "unhandled" traceback.
    assert '"message":"database unavailable"' in output
    assert '"message":"unhandled exception"' not in output
