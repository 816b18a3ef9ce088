"""`python -m app ...`: commands run in-process (CliRunner) and, where the process
boundary matters (exit status, configuration at start-up), as real subprocesses."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from alembic import command
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import get_settings
from app.database import alembic_config
from tests.helpers import canonical_identities_revisions, fullwidth

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the CLI's settings at a fresh SQLite file; yields that file."""
    path = tmp_path / "cli.db"
    monkeypatch.chdir(tmp_path)  # no developer .env is read
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{path}")
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("SECRET_KEY", raising=False)
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def test_migrate_then_create_superuser(cli_env: Path) -> None:
    migrated = runner.invoke(cli, ["migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert "up to date" in migrated.output

    created = runner.invoke(
        cli,
        [
            "create-superuser",
            "--email",
            "Root@Example.com",
            "--username",
            "root",
            "--password",
            "Sup3rSecret!",
        ],
    )
    assert created.exit_code == 0, created.output
    with sqlite3.connect(cli_env) as db:
        row = db.execute(
            "SELECT email, email_canonical, username_canonical, role, is_active,"
            " is_verified, hashed_password FROM users"
        ).fetchone()
    assert row[:6] == ("Root@example.com", "root@example.com", "root", "admin", 1, 1)
    assert row[6].startswith("$argon2id$")

    again = runner.invoke(
        cli,
        [
            "create-superuser",
            "--email",
            fullwidth("root") + "@example.com",  # fullwidth: the same identity
            "--username",
            "root2",
            "--password",
            "Sup3rSecret!",
        ],
    )
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_migrate_reports_accounts_that_would_share_one_identity(cli_env: Path) -> None:
    before, _ = canonical_identities_revisions()
    command.upgrade(alembic_config(f"sqlite+aiosqlite:///{cli_env}"), before)
    with sqlite3.connect(cli_env) as db:
        db.executemany(
            "INSERT INTO users (email, username, hashed_password, first_name,"
            " last_name) VALUES (?, ?, 'x', 'F', 'L')",
            [("cux@example.com", "cux"), (fullwidth("cux") + "@example.com", "cux2")],
        )

    migrated = runner.invoke(cli, ["migrate"])

    assert migrated.exit_code == 1
    assert "email 'cux@example.com': id 1 ('cux@example.com'), id 2" in migrated.output
    assert "Traceback" not in migrated.output


def test_create_superuser_prompts_without_echoing_the_password(cli_env: Path) -> None:
    assert runner.invoke(cli, ["migrate"]).exit_code == 0

    result = runner.invoke(
        cli,
        ["create-superuser"],
        input="boss@example.com\nboss\nHidden-Passw0rd\nHidden-Passw0rd\n",
    )

    assert result.exit_code == 0, result.output
    assert "Created admin boss <boss@example.com>" in result.output
    assert "Repeat password" in result.output
    assert "Hidden-Passw0rd" not in result.output


def test_create_superuser_rejects_weak_password(cli_env: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "create-superuser",
            "--email",
            "a@example.com",
            "--username",
            "abc",
            "--password",
            "weak",
        ],
    )
    assert result.exit_code == 2
    assert "password" in result.output


def test_unreachable_database_is_a_clear_error(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql+asyncpg://app:hunter2@127.0.0.1:1/none"
    )
    get_settings.cache_clear()

    migrate = runner.invoke(cli, ["migrate"])
    superuser = runner.invoke(
        cli,
        [
            "create-superuser",
            "--email",
            "a@example.com",
            "--username",
            "abc",
            "--password",
            "Str0ngEnough",
        ],
    )

    for result in (migrate, superuser):
        assert result.exit_code == 1
        assert (
            "cannot use the database at postgresql+asyncpg://app:***@127.0.0.1:1/none"
            in result.output
        )
        assert "hunter2" not in result.output
        assert "Traceback" not in result.output


def test_invalid_configuration_is_exit_2(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    get_settings.cache_clear()
    result = runner.invoke(cli, ["migrate"])
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output


def test_bad_arguments_are_usage_errors(cli_env: Path) -> None:
    assert runner.invoke(cli, ["serve", "--port", "0"]).exit_code == 2
    combined = runner.invoke(cli, ["serve", "--reload", "--workers", "2"])
    assert combined.exit_code == 2
    assert "cannot be combined" in combined.output
    # Without Redis every worker would keep its own revocations and lockouts.
    unshared = runner.invoke(cli, ["serve", "--workers", "2"])
    assert unshared.exit_code == 2
    assert "needs REDIS_URL" in unshared.output


def test_openapi_to_file_and_stdout(cli_env: Path, tmp_path: Path) -> None:
    output = tmp_path / "openapi.json"
    written = runner.invoke(cli, ["openapi", "--output", str(output)])
    assert written.exit_code == 0, written.output
    document = orjson.loads(output.read_bytes())
    assert "/api/v1/auth/signup" in document["paths"]
    printed = runner.invoke(cli, ["openapi"])
    assert orjson.loads(printed.stdout)["info"]["title"] == document["info"]["title"]


def test_prune_deletes_what_ended_and_says_how_much(cli_env: Path) -> None:
    assert runner.invoke(cli, ["migrate"]).exit_code == 0
    columns = "event_id, event_type, aggregate_type, aggregate_id, payload, occurred_at"
    with sqlite3.connect(cli_env) as db:
        for event_id, published in (("old", "2000-01-01 00:00:00"), ("queued", None)):
            db.execute(
                f"INSERT INTO outbox_events ({columns}, published_at, done_at, attempts)"  # noqa: S608
                " VALUES (?, 'item.created', 'item', '1', '{}', '2000-01-01', ?, ?, 0)",
                (event_id, published, published),
            )

    pruned = runner.invoke(cli, ["prune"])

    assert pruned.exit_code == 0, pruned.output
    assert "outbox_events: 1 deleted" in pruned.output
    assert "auth_sessions: 0 deleted" in pruned.output
    with sqlite3.connect(cli_env) as db:
        left = db.execute("SELECT event_id FROM outbox_events").fetchall()
    assert left == [("queued",)]


@pytest.mark.slow  # a real `serve` process
def test_production_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"SECRET_KEY", "DATABASE_URL"}
    }
    env.update(
        ENVIRONMENT="production",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
    )
    # A real process: the exit status is what an orchestrator sees.
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "8765"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "SECRET_KEY" in result.stderr
    assert "Serving" not in result.stdout


def test_production_refuses_to_start_with_open_metrics(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"METRICS_TOKEN", "METRICS_ENABLED", "DATABASE_URL"}
    }
    env.update(
        ENVIRONMENT="production",
        SECRET_KEY="k" * 16 + "Q9" * 8,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
    )
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "8766"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "METRICS_TOKEN" in result.stderr
    assert "Serving" not in result.stdout
