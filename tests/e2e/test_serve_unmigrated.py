"""`python -m app serve` on a database nobody migrated says so at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory

from app.database import alembic_config
from tests.conftest import (
    BACKENDS,
    TEST_DATABASE_URL,
    _create_postgres_database,
    _drop_postgres_database,
)
from tests.e2e.test_server import free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=BACKENDS)
async def blank_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A database of each backend with no table at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'blank.db'}"
        return
    assert TEST_DATABASE_URL is not None
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


def serve_briefly(database_url: str, tmp_path: Path) -> tuple[int, str]:
    """Start `serve` on `database_url`; the `/ready` status and the output."""
    port = free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "REDIS_"))
        },
        "ENVIRONMENT": "development",
        "DATABASE_URL": database_url,
        "STORAGE_DIR": str(tmp_path / "files"),
        "MAIL_DIR": str(tmp_path / "mail"),
        "READY_TIMEOUT_SECONDS": "2",
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
        ready = httpx.get(f"{base}/ready", timeout=10)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    return ready.status_code, output


def test_serve_on_an_unmigrated_database_warns_and_is_not_ready(
    blank_url: str, tmp_path: Path
) -> None:
    status, output = serve_briefly(blank_url, tmp_path)

    assert status == 503
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    warning = (
        f"schema at revision none, the migrations' head is {head}: "
        "run `python -m app migrate`"
    )
    assert "warning: database at " in output
    assert warning in output
    # Said before serving, where the operator looks first.
    assert output.index(warning) < output.index("Serving ")


def test_serve_with_the_database_down_says_so_and_serves(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://app:hunter2@127.0.0.1:{free_port()}/none"
    status, output = serve_briefly(url, tmp_path)

    assert status == 503  # up, not ready; it becomes ready when the database is
    assert "warning: database at postgresql+asyncpg://app:***@127.0.0.1:" in output
    assert "cannot check its schema now (" in output
    assert "hunter2" not in output
