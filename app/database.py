"""Engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from app import sqlite_driver
from app.core.config import Settings
from app.pool import FairAsyncQueuePool, ping_after_idle


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run while one writer commits; NORMAL is durable in WAL
    # except for the last transactions on power loss, the usual trade-off.
    # (Busy waits and checkpoints are the driver's: see app/sqlite_driver.py.)
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _json_text(value: Any) -> str:
    """JSON columns (audit changes, event payloads) as orjson writes them.

    SQLAlchemy's default is the standard library's encoder: 5 % of the CPU of
    a batch of creates.
    """
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# Both engines read and write JSON columns with orjson.
JSON_CODEC: dict[str, Any] = {
    "json_serializer": _json_text,
    "json_deserializer": orjson.loads,
}


def create_engine(settings: Settings) -> AsyncEngine:
    """Create the async engine the settings describe.

    Args:
        settings: Application settings (URL, pool sizes, timeouts).

    Returns:
        A configured `AsyncEngine`; it connects lazily.
    """
    if settings.is_sqlite:
        path = settings.sqlite_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            settings.DATABASE_URL,
            echo=settings.DB_ECHO,
            # Statement errors (and tracebacks in the log) never carry the values:
            # they are password hashes, emails, phone numbers.
            hide_parameters=True,
            poolclass=FairAsyncQueuePool,
            # Each aiosqlite connection owns a thread: open a fixed set once and
            # queue for them, instead of opening (and closing) overflow ones.
            pool_size=settings.DB_POOL_SIZE,
            max_overflow=0,
            pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
            # Sessions and connections always end their transaction before the
            # connection returns; a second ROLLBACK on return is one more call
            # per request for nothing.
            pool_reset_on_return=None,
            module=sqlite_driver.dbapi(settings.SQLITE_BUSY_TIMEOUT_MS / 1000),
            **JSON_CODEC,
        )
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        return engine
    engine = create_async_engine(
        settings.DATABASE_URL,
        echo=settings.DB_ECHO,
        hide_parameters=True,  # as above
        poolclass=FairAsyncQueuePool,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_timeout=settings.DB_POOL_TIMEOUT_SECONDS,
        pool_recycle=settings.DB_POOL_RECYCLE_SECONDS,
        connect_args={
            "server_settings": {
                "idle_in_transaction_session_timeout": str(
                    settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS
                ),
                "application_name": settings.PROJECT_NAME,
            }
        },
        **JSON_CODEC,
    )
    if settings.DB_POOL_PRE_PING:
        ping_after_idle(engine, settings.DB_POOL_PRE_PING_IDLE_SECONDS)
    return engine


def create_sessionmaker(
    engine: AsyncEngine, session_class: type[Session] = Session
) -> async_sessionmaker[AsyncSession]:
    """Session factory: no expiry on commit, so committed objects stay readable.

    Args:
        engine: Where the sessions' connections come from.
        session_class: The sync session class behind each `AsyncSession`.
    """
    return async_sessionmaker(
        engine,
        expire_on_commit=False,
        autoflush=False,
        sync_session_class=session_class,
    )


def create_reader(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for reads that need no transaction around them (lists, lookups).

    On PostgreSQL its connections are in autocommit mode: a lone SELECT is one
    round trip instead of three (BEGIN, the SELECT, ROLLBACK), and each
    statement still reads one consistent snapshot. SQLite already reads
    outside a transaction (Python's sqlite3 opens one only before a write),
    and switching its connections' mode would cost a trip to their threads,
    so there it is the engine itself. Never write through it.
    """
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


class ReadOnlySessionError(RuntimeError):
    """A write went through a read session (a bug: it would not be atomic)."""


class ReadSession(Session):
    """The sync side of a read session: it refuses every write."""


@event.listens_for(ReadSession, "before_flush")
def _refuse_flush(session: Session, _flush: UOWTransaction, _instances: Any) -> None:
    raise ReadOnlySessionError("an ORM change was flushed through a read session")


@event.listens_for(ReadSession, "do_orm_execute")
def _refuse_dml(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlySessionError("a write statement ran through a read session")


def create_read_sessionmaker(reader: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for routes that only read, on `reader` (see `create_reader`).

    On PostgreSQL each statement is one round trip, without the BEGIN before
    it and the ROLLBACK after. A flush and an `insert`/`update`/`delete`
    statement raise `ReadOnlySessionError`: in autocommit they would not be
    one transaction (raw SQL text is not inspected).
    """
    return create_sessionmaker(reader, ReadSession)


class Database:
    """The engine, its reader and the session factories of one application instance."""

    def __init__(self, settings: Settings) -> None:
        """Build the engine (no connection is opened yet)."""
        self.engine = create_engine(settings)
        self.reader = create_reader(self.engine)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.read_sessionmaker = create_read_sessionmaker(self.reader)

    async def dispose(self) -> None:
        """Close every pooled connection (graceful shutdown)."""
        await self.engine.dispose()


def safe_url(url: str) -> str:
    """Render a database URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def alembic_config(url: str | None = None) -> AlembicConfig:
    """The Alembic configuration of this repository, optionally for another URL.

    Args:
        url: Database to migrate; defaults to the settings' `DATABASE_URL`.

    Returns:
        A config whose `attributes["url"]` overrides the settings when given.
    """
    config = AlembicConfig(str(ALEMBIC_INI))
    if url is not None:
        config.attributes["url"] = url
    return config


def upgrade_to_head(url: str | None = None) -> None:
    """Apply every migration (synchronously; runs its own event loop)."""
    alembic_command.upgrade(alembic_config(url), "head")


def migration_heads() -> frozenset[str]:
    """The revisions the migration scripts end at (read from the files, not the database)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def migration_revisions() -> frozenset[str]:
    """Every revision the migration scripts know."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


def _current_revisions(connection: Connection) -> frozenset[str]:
    # No alembic_version table (an empty database) reads as no revision.
    return frozenset(MigrationContext.configure(connection).get_current_heads())


def _revisions(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


class SchemaCheck:
    """Whether a database's schema is at the migrations' head.

    The head is read from the scripts once, when the check is made. Once a
    database was found at it, it is not read again: a schema is not
    downgraded under a running service, and the readiness probe that asks
    stays one `SELECT 1`.

    A database at a revision the scripts do not know is *ahead* of this code
    (a rollback of the code after a migration, old pods during a rollout):
    it counts as ready, since migrations are written to keep the previous
    code working, and marking every old instance unready would turn a
    rollout into an outage; `migrate` could not mend it anyway.
    """

    def __init__(
        self,
        expected: frozenset[str] | None = None,
        known: frozenset[str] | None = None,
    ) -> None:
        """Expect `expected` revisions (default: the scripts' heads) of `known` ones."""
        self.expected = migration_heads() if expected is None else expected
        self.known = migration_revisions() if known is None else known | self.expected
        self._at_head = False

    async def problem(self, connection: AsyncConnection) -> str | None:
        """What is wrong with the schema `connection` sees, or None when at head.

        Args:
            connection: An open connection to the database to check.

        Returns:
            A one-line reason naming the database's and the scripts' revisions.
        """
        if self._at_head:
            return None
        current = await connection.run_sync(_current_revisions)
        if current == self.expected or (current and not current <= self.known):
            self._at_head = True  # at head, or ahead of this code
            return None
        return (
            f"schema at revision {_revisions(current)}, the migrations' head is "
            f"{_revisions(self.expected)}: run `python -m app migrate`"
        )
