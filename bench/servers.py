"""The processes and the database of a run: environment, fresh database, servers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app.core.config import Settings
from bench.client import wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Settings the runner always sets; any other setting comes from `--set` only.
SETTINGS_NOT_INHERITED = {*Settings.model_fields, "RATE_LIMIT_ENABLED"}
SERVER_FLAGS = [
    "--factory",
    "--host",
    "127.0.0.1",
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
]


def server_env(
    database_url: str, secret_key: str, overrides: dict[str, str]
) -> dict[str, str]:
    """The environment of the service, the ceiling and the helper processes.

    Production settings; settings exported in the caller's shell are dropped
    so that a run depends only on its command line (`--set` adds overrides).
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTINGS_NOT_INHERITED
    }
    python_path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update(
        {
            "ENVIRONMENT": "production",
            "SECRET_KEY": secret_key,
            "DATABASE_URL": database_url,
            "RATE_LIMIT_ENABLED": "false",
            # Production requires a metrics token; the runner reads the
            # OpenAPI document to check the routes it measures exist.
            "METRICS_TOKEN": secret_key,
            "DOCS_ENABLED": "true",
            "PYTHONPATH": os.pathsep.join(python_path),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(overrides)
    return env


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_python(module: str, args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run `python -m module args` to completion; return its stdout.

    Raises:
        RuntimeError: With the process's output when it fails.
    """
    completed = subprocess.run(  # noqa: S603 - our own interpreter and module
        [PYTHON, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"`python -m {module}` failed ({completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return completed.stdout


@dataclass(frozen=True)
class Database:
    """The run's fresh database."""

    kind: str  # "sqlite" or "postgresql"
    url: str
    description: str


def _sqlite_database(work: Path) -> Database:
    import sqlite3

    path = work / "bench.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Database(
        "sqlite",
        f"sqlite+aiosqlite:///{path}",
        f"SQLite {sqlite3.sqlite_version} (file {path.name}, WAL)",
    )


async def _admin(server_url: str, statement: str) -> str:
    url = make_url(server_url)
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await connection.execute(statement)
        version: str = await connection.fetchval("SHOW server_version")
        return version
    finally:
        await connection.close()


@contextmanager
def fresh_database(server_url: str | None, work: Path) -> Iterator[Database]:
    """A new, empty database: a SQLite file, or a PostgreSQL database dropped after.

    Args:
        server_url: `postgresql+asyncpg://...` of a server, or None for SQLite.
        work: The run's directory (holds the SQLite file).
    """
    if server_url is None:
        database = _sqlite_database(work)
        try:
            yield database
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database.url.split('///', 1)[1]}{suffix}").unlink(
                    missing_ok=True
                )
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    version = asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name)
    try:
        yield Database(
            "postgresql",
            url.render_as_string(hide_password=False),
            f"PostgreSQL {version} (database {name}, dropped afterwards)",
        )
    finally:
        asyncio.run(
            _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


class Server:
    """One uvicorn server process with the benchmark's flags."""

    def __init__(self, name: str, app: str, env: dict[str, str], work: Path) -> None:
        """Describe the server; `start` launches it."""
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / f"{name}.log"
        self.argv = [
            PYTHON,
            "-m",
            "uvicorn",
            app,
            *SERVER_FLAGS,
            "--port",
            str(self.port),
            "--app-dir",
            str(ROOT),
        ]
        self._env = env
        self._work = work
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> str:
        """The command line, for the report (interpreter shortened)."""
        return " ".join(["python", *self.argv[1:-2]])

    def start(self) -> None:
        """Launch the process, its stdout and stderr to its log (does not wait)."""
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own argv
                self.argv,
                env=self._env,
                cwd=self._work,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        """Wait until `GET /health` answers 200.

        Raises:
            RuntimeError: The server exited or did not come up (log tail attached).
        """
        try:
            wait_until_healthy(self.base_url, self.alive)
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}\n--- {self.log_path} ---\n{self.log_tail()}"
            ) from exc

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL after 20 s."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running(server: Server, *, wait: bool = True) -> Iterator[Server]:
    """Start `server` (and wait for it unless told not to); stop it on the way out."""
    try:
        server.start()
        if wait:
            server.wait_ready()
        yield server
    finally:
        server.stop()
