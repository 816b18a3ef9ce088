"""Which database errors mean "down or busy for now" (503) rather than a bug (500).

Told apart by exception type, as the drivers raise them, never by message:

- nothing answers or the link broke: `ConnectionError` (refused, reset,
  aborted), `TimeoutError` and `socket.gaierror` raised while connecting,
  before any DB-API layer wraps them; a `DBAPIError` that SQLAlchemy marked
  `connection_invalidated` (the server went away mid-statement);
- PostgreSQL refuses for now: asyncpg's connection errors (SQLSTATE class 08,
  e.g. `ConnectionDoesNotExistError`), `CannotConnectNowError` (starting up),
  `AdminShutdownError` / `CrashShutdownError`, `TooManyConnectionsError`;
- every pooled connection stayed busy for the pool timeout
  (`sqlalchemy.exc.TimeoutError`);
- SQLite's file stayed locked by another writer past the busy timeout
  (`SQLITE_BUSY*` / `SQLITE_LOCKED*`).

A bad statement, a constraint violation or anything else stays a 500 (or its
own mapping): retrying it later would fail the same way.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import exc as sa_exc

from app.core.batcher import OutcomeUnknownError

RETRY_AFTER_SECONDS = 5
"""`Retry-After` of a 503 for a database that is down or busy."""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.TimeoutError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, the driver error it wraps (`.orig`) and what caused those."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _sqlite_busy(error: BaseException) -> bool:
    if not isinstance(error, sqlite3.OperationalError):
        return False
    name: str = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(_SQLITE_BUSY)


def outcome_unknown(error: BaseException) -> bool:
    """Whether `error` came from a write that may have committed (no retry advice).

    A connection lost during a COMMIT looks like an outage, but a 503 with
    `Retry-After` would invite a client to repeat a write that may be done.
    """
    return any(isinstance(cause, OutcomeUnknownError) for cause in _causes(error))


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database is unreachable or busy, not that we erred.

    Args:
        error: An exception that escaped a request.

    Returns:
        True when a later retry of the same request may well succeed.
    """
    for cause in _causes(error):
        if isinstance(cause, _UNAVAILABLE) or _sqlite_busy(cause):
            return True
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
    return False
