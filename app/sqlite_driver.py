"""SQLite for the async engine, one trip to the connection's thread per statement.

aiosqlite gives every connection a thread and runs each DB-API call there;
SQLAlchemy's adapter makes four such calls per statement (open a cursor,
execute, fetch, close) and one more for every COMMIT or ROLLBACK. Each call
is a hand-off between the event loop and that thread (a queue, a wake-up, the
GIL, a loop callback), and on a busy two-core machine those hand-offs, not the
queries, were most of the cost of a request (measured: a one-row list spent
2 ms in nine of them). Here a statement's cursor, execution and rows travel
in one call, and a COMMIT or ROLLBACK with no transaction open (pysqlite opens
one only before a write) does not travel at all.

Writers also queue in the process before SQLite sees them. SQLite lets one
transaction write at a time; a second writer is put to sleep by its busy
handler with a growing back-off (1, 2, 5 ... 100 ms) and wakes up late, long
after the lock was free. So a connection about to open a write transaction
first takes the engine's write lock (an asyncio lock: FIFO, handed over the
moment the holder commits or rolls back), with the busy timeout as its limit.
Other processes on the same file still meet SQLite's own locking.

Everything else (the thread, the connection's lifecycle, errors) is aiosqlite
and SQLAlchemy's own aiosqlite dialect; only the cursor and the transaction
ends change. Server-side cursors (`stream()`) keep aiosqlite's row-by-row
cursor.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

Description = tuple[tuple[Any, ...], ...] | None
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _writes(operation: str) -> bool:
    """Whether pysqlite opens a write transaction for this statement."""
    return operation.lstrip()[:7].upper().startswith(_WRITES)


class _Outcome:
    """What one statement left behind, carried back from the thread at once."""

    __slots__ = ("description", "in_transaction", "lastrowid", "rowcount", "rows")

    def __init__(self, cursor: sqlite3.Cursor, rows: list[Any]) -> None:
        self.description: Description = cursor.description
        self.rowcount = cursor.rowcount
        self.lastrowid = cursor.lastrowid
        self.rows = rows
        self.in_transaction = cursor.connection.in_transaction


def _execute(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> _Outcome:
    """Runs in the connection's thread: execute, fetch every row, close."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return _Outcome(cursor, rows)
    finally:
        cursor.close()


class PrefetchingCursor:
    """An aiosqlite-shaped cursor whose rows arrive with the execution."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        """Bind to the adapted connection (no thread call: nothing opens yet)."""
        self._connection = connection
        self._rows: list[Any] = []
        self.description: Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> PrefetchingCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    async def execute(self, operation: str, parameters: Any = ()) -> None:
        """Run one statement and keep its rows."""
        await self._run(operation, parameters, many=False)

    async def executemany(self, operation: str, parameters: Sequence[Any]) -> None:
        """Run one statement for each parameter set."""
        await self._run(operation, parameters, many=True)

    async def _run(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection = self._connection
        if not connection.in_transaction and _writes(operation):
            await connection.take_write_lock()
        driver = connection.driver
        connection.in_transaction = True  # unknown until the call returns
        # aiosqlite's own queue to its thread (untyped, hence the ignore).
        outcome: _Outcome = await driver._execute(  # type: ignore[no-untyped-call]
            _execute, driver._conn, operation, parameters, many
        )
        connection.in_transaction = outcome.in_transaction
        if not outcome.in_transaction:
            connection.release_write_lock()
        self.description = outcome.description
        self.rowcount = outcome.rowcount
        self.lastrowid = outcome.lastrowid
        self._rows = outcome.rows

    async def fetchall(self) -> list[Any]:
        """Every remaining row."""
        rows, self._rows = self._rows, []
        return rows

    def close(self) -> None:
        """Forget the rows (the sqlite3 cursor is already closed)."""
        self._rows = []


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor adapter over a `PrefetchingCursor`."""

    __slots__ = ()

    # Closing is a plain call: the sqlite3 cursor closed in its thread already.
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return PrefetchingCursor(self._adapt_connection)  # type: ignore[arg-type]


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection adapter with one-trip statements."""

    __slots__ = ("holds_write_lock", "in_transaction")

    _cursor_cls = OneTripCursor
    dbapi: OneTripDBAPI

    def __init__(self, dbapi: OneTripDBAPI, connection: aiosqlite.Connection) -> None:
        """Wrap an open aiosqlite connection."""
        # aiosqlite.Connection is what the parent expects; its protocol type
        # does not describe aiosqlite's context-manager `cursor()`.
        super().__init__(dbapi, connection)  # type: ignore[arg-type]
        # The adapter may run statements it did not see (a server-side cursor),
        # so "no transaction" is only believed after our own statements.
        self.in_transaction = True
        self.holds_write_lock = False

    async def take_write_lock(self) -> None:
        """Wait (at most the busy timeout) until no other connection writes.

        Raises:
            sqlite3.OperationalError: "database is locked", as SQLite says it.
        """
        if self.holds_write_lock:
            return
        try:
            await asyncio.wait_for(
                self.dbapi.write_lock.acquire(), self.dbapi.busy_timeout
            )
        except TimeoutError as exc:
            raise sqlite3.OperationalError("database is locked") from exc
        self.holds_write_lock = True

    def release_write_lock(self) -> None:
        """Let the next writer in (after COMMIT or ROLLBACK)."""
        if self.holds_write_lock:
            self.holds_write_lock = False
            self.dbapi.write_lock.release()

    @property
    def driver(self) -> aiosqlite.Connection:
        """The aiosqlite connection (its thread and sqlite3 connection)."""
        return self._connection  # type: ignore[return-value]

    def cursor(self, server_side: bool = False) -> Any:
        """A cursor; a server-side one may open a transaction we cannot see."""
        if server_side:
            self.in_transaction = True
        return super().cursor(server_side)

    def commit(self) -> None:
        """COMMIT, unless no transaction is open."""
        if self.in_transaction:
            super().commit()
            self.in_transaction = False
        self.release_write_lock()

    def rollback(self) -> None:
        """ROLLBACK, unless no transaction is open."""
        try:
            if self.in_transaction:
                super().rollback()
                self.in_transaction = False
        finally:
            self.release_write_lock()

    def close(self) -> None:
        """Close the connection (and give up the write lock if it had it)."""
        try:
            super().close()
        finally:
            self.release_write_lock()

    def terminate(self) -> None:
        """Drop an invalidated connection (a cancelled request, a broken file).

        SQLite discards the open transaction with the connection; the write
        lock must go with it, or every later writer would time out.
        """
        try:
            super().terminate()
        finally:
            self.in_transaction = False
            self.release_write_lock()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DB-API module of SQLAlchemy, connecting `OneTripConnection`s.

    One per engine: its write lock is shared by the engine's connections.
    """

    def __init__(self, busy_timeout: float) -> None:
        """Set up the module; `busy_timeout` (seconds) bounds a wait to write."""
        super().__init__(aiosqlite, sqlite3)
        self.busy_timeout = busy_timeout
        self.write_lock = asyncio.Lock()

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        """Open an aiosqlite connection (a daemon thread) and adapt it."""
        connection = self.aiosqlite.connect(*arg, **kw)
        # A forgotten connection must not keep the interpreter alive at exit.
        connection._thread.daemon = True
        return OneTripConnection(self, await_(connection))


def dbapi(busy_timeout: float) -> OneTripDBAPI:
    """The module to pass as `create_async_engine(..., module=...)`.

    Args:
        busy_timeout: Seconds a writer waits for another one before
            "database is locked" (SQLite's busy timeout, for the same wait).
    """
    return OneTripDBAPI(busy_timeout)
