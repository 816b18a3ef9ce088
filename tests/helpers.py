"""Small helpers shared by several test modules."""

from __future__ import annotations

import email
import io
import logging
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.message import EmailMessage as MimeMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest
from aiosmtpd.controller import Controller
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.logging import JsonFormatter
from app.core.security import PasswordHasher
from app.database import alembic_config


def claims_of(token: str, settings: Settings) -> dict[str, Any]:
    """The verified claims of an access token the service issued."""
    decoded: dict[str, Any] = jwt.decode(
        token,
        settings.SECRET_KEY.get_secret_value(),
        algorithms=["HS256"],
        audience=settings.JWT_AUDIENCE,
    )
    return decoded


@contextmanager
def recorded_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements `engine` sends to the database inside the block."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextmanager
def capture_logs() -> Iterator[io.StringIO]:
    """Collect JSON log lines (attach after create_app, which resets handlers)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


class MailSink:
    """A real SMTP server (aiosmtpd) on a free loopback port; keeps what it gets."""

    def __init__(self) -> None:
        self.messages: list[MimeMessage] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=_free_port())

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=default_policy)  # type: ignore[arg-type]
        )
        return "250 OK"

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def to(self, address: str) -> list[MimeMessage]:
        return [m for m in self.messages if m["To"] == address]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    """A private redis-server (no persistence unless `options` say) to stop and restart.

    Starting again after `stop` gives an empty Redis, as a restart without
    persistence or a failover to an empty replica would.
    """

    def __init__(self, directory: Path, options: Sequence[str] = ()) -> None:
        self.port = _free_port()
        self.directory = directory
        self.options = list(options)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                *self.options,  # later options win
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a paused one must hear TERM
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@contextmanager
def redis_server(directory: Path, *options: str) -> Iterator[RedisProcess]:
    """A running private redis-server with `options`, stopped after the block."""
    server = RedisProcess(directory, options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def mail_sink() -> Iterator[MailSink]:
    """Run a `MailSink` for the duration of the block."""
    sink = MailSink()
    sink.controller.start()
    try:
        yield sink
    finally:
        sink.controller.stop()


def body_text(message: MimeMessage) -> str:
    """The plain-text part of an email."""
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    text: str = part.get_content()
    return text


def token_from(message: MimeMessage) -> str:
    """The `token` query parameter of the link in an email."""
    match = re.search(r"[?&]token=([A-Za-z0-9_%\-.~]+)", body_text(message))
    assert match, body_text(message)
    return unquote(match.group(1))


def pool_use_during_hashes(
    monkeypatch: pytest.MonkeyPatch, hasher: PasswordHasher, engine: AsyncEngine
) -> list[int]:
    """Record how many pooled connections are checked out as each hash starts.

    Wraps the hasher's hash, verification and dummy verification; the list
    fills in call order.
    """
    held: list[int] = []
    hash_, verify = hasher.hash, hasher.verify_and_update
    burn = hasher.burn_verify_time

    async def watched_hash(password: str) -> str:
        held.append(engine.pool.checkedout())
        return await hash_(password)

    async def watched_verify(password: str, hashed: str) -> tuple[bool, str | None]:
        held.append(engine.pool.checkedout())
        return await verify(password, hashed)

    async def watched_burn(password: str) -> None:
        held.append(engine.pool.checkedout())
        await burn(password)

    monkeypatch.setattr(hasher, "hash", watched_hash)
    monkeypatch.setattr(hasher, "verify_and_update", watched_verify)
    monkeypatch.setattr(hasher, "burn_verify_time", watched_burn)
    return held


def canonical_identities_revisions() -> tuple[str, str]:
    """The migration adding canonical identities, and the revision before it.

    Found by file name, so the tests follow it when migrations are re-chained.
    """
    scripts = ScriptDirectory.from_config(alembic_config())
    [script] = [
        script
        for script in scripts.walk_revisions()
        if script.path.endswith("_canonical_identities.py")
    ]
    assert isinstance(script.down_revision, str)
    return script.down_revision, script.revision


def fullwidth(text: str) -> str:
    """`text` with its printable ASCII in fullwidth forms (NFKC maps them back)."""
    return "".join(
        chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text
    )
