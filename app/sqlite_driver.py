"""SQLite for the async engine: statements run on the event loop, briefly.

SQLAlchemy's aiosqlite adapter sends every DB-API call to the connection's own
thread. For an embedded database that costs more than the queries: each call
is a queue, a thread wake-up and a loop callback, and the thread needs the GIL
back after every row SQLite steps to (Python's sqlite3 releases it around each
step). Under load the loop thread and ten connection threads fought over the
GIL: a 100-row page spent 1.3 ms of thread CPU for a query that takes 0.26 ms
on its own, and the process used barely more than one core's worth of either.
So, as better-sqlite3 does for Node.js, a statement here runs on the calling
(event loop) thread, where SQLite answers indexed queries in microseconds:

- **Reads are bounded.** A SELECT (or any statement outside a transaction)
  gets `INLINE_READ_BUDGET` seconds on the loop; a progress handler interrupts
  it past that, and it runs again, whole, in the connection's thread (a report
  or an unindexed search does not stall other requests; only time is lost:
  interrupting it changes nothing). Its next `SLOW_RUNS_IN_THREAD` runs go
  straight to the thread.
- **Writes run on the loop** (interrupting one would roll its transaction
  back). They queue in the process first: a connection about to open a write
  transaction takes the engine's asyncio lock (FIFO, handed over at COMMIT or
  ROLLBACK), bounded by the busy timeout ("database is locked", as SQLite says
  it). SQLite's own busy handler (sleeping 1, 2, 5 ... 100 ms and waking late)
  would block the loop, so it is off: when another process holds the file's
  write lock, the statement gets SQLITE_BUSY at once and is retried after an
  asyncio sleep, until the busy timeout.
- **Checkpoints run off the loop.** SQLite copies the WAL back into the
  database at a COMMIT now and then, with an fsync (10 ms measured); here
  automatic checkpoints are off and every `CHECKPOINT_EVERY` write commits of
  the engine, the committing connection runs a PASSIVE checkpoint in its thread
  before it goes back to the pool, with the engine's writers held back (readers
  and the loop carry on); a TRUNCATE one when other processes kept the log
  from starting over.

The connection's lifecycle (open, close, terminate), server-side cursors
(`stream()`) and errors are aiosqlite's and SQLAlchemy's.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

T = TypeVar("T")
Description = tuple[tuple[Any, ...], ...] | None

INLINE_READ_BUDGET = 0.002
"""CPU seconds a SELECT may spend on the event loop before it moves to its thread.

CPU time of the loop thread, not wall time: SQLite lets go of the GIL while it
works, and time spent getting it back from another thread is not the query's
(counting it sent fast queries to the thread under load, where they made the
GIL busier still).
"""
SLOW_RUNS_IN_THREAD = 100
"""Runs a statement that went over its budget goes straight to the thread."""
_SLOW_STATEMENTS_KEPT = 1000
PROGRESS_STEPS = 1000
"""SQLite VM steps between two budget checks (about 10-50 µs of work)."""
CHECKPOINT_EVERY = 200
"""Write commits of an engine between two WAL checkpoints."""
WAL_TRUNCATE_FRAMES = 10_000
"""Log length (pages, 4 KiB each by default) from which a checkpoint truncates."""
TRUNCATE_WAIT_MS = 500
"""How long a truncating checkpoint waits for other connections (in its thread)."""
_RETRY_FIRST, _RETRY_MAX = 0.001, 0.025
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _writes(operation: str) -> bool:
    """Whether pysqlite opens a write transaction for this statement."""
    return operation.lstrip()[:7].upper().startswith(_WRITES)


def _interruptible(operation: str, in_transaction: bool) -> bool:
    """Whether interrupting this statement leaves everything as it was.

    A SELECT changes nothing; outside a transaction SQLite undoes a statement
    whole. An interrupted write inside a transaction rolls it all back.
    """
    if operation.lstrip()[:6].upper() == "SELECT":
        return True
    return not in_transaction and not _writes(operation)


def _busy(error: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock: a retry may succeed.

    Not SQLITE_BUSY_SNAPSHOT: a transaction that read an older snapshot can
    never write; only starting it again helps.
    """
    name: str = getattr(error, "sqlite_errorname", "")
    return name == "SQLITE_BUSY" or (
        name.startswith("SQLITE_BUSY_") and name != "SQLITE_BUSY_SNAPSHOT"
    )


class _Outcome:
    """What one statement left behind: description, counts and every row."""

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
    """Execute, fetch every row, close (on whichever thread calls it)."""
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


def _checkpoint(connection: sqlite3.Connection) -> None:
    """PASSIVE checkpoint; TRUNCATE too once the log is long (runs in the thread).

    In one process the log starts over after a PASSIVE checkpoint (writers
    wait meanwhile). Writers in other processes can keep appending through
    every one of ours, and then the log never starts over: it grew by 30 MB a
    second under load with two workers. TRUNCATE shuts writers out, waits
    (briefly) for readers, and empties the file.
    """
    _busy_flag, log_frames, _done = connection.execute(
        "PRAGMA wal_checkpoint(PASSIVE)"
    ).fetchone()
    if log_frames < WAL_TRUNCATE_FRAMES:
        return
    connection.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.execute("PRAGMA busy_timeout=0")


class PrefetchingCursor:
    """An aiosqlite-shaped cursor whose rows arrive with the execution."""

    arraysize = 1

    def __init__(self, connection: InlineConnection) -> None:
        """Bind to the adapted connection (nothing opens yet)."""
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
        connection.in_transaction = True  # unknown until the statement returns
        outcome = await connection.run(operation, parameters, many)
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


class InlineCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor adapter over a `PrefetchingCursor`."""

    __slots__ = ()

    # Closing is a plain call: the sqlite3 cursor is closed already.
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return PrefetchingCursor(self._adapt_connection)  # type: ignore[arg-type]


class InlineConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection adapter, running statements inline."""

    __slots__ = ("_deadline", "_interrupted", "holds_write_lock", "in_transaction")

    _cursor_cls = InlineCursor
    dbapi: InlineDBAPI

    def __init__(self, dbapi: InlineDBAPI, connection: aiosqlite.Connection) -> None:
        """Wrap an open aiosqlite connection and install the read budget."""
        # aiosqlite.Connection is what the parent expects; its protocol type
        # does not describe aiosqlite's context-manager `cursor()`.
        super().__init__(dbapi, connection)  # type: ignore[arg-type]
        # The adapter may run statements it did not see (a server-side cursor),
        # so "no transaction" is only believed after our own statements.
        self.in_transaction = True
        self.holds_write_lock = False
        self._deadline = math.inf
        self._interrupted = False
        self.sqlite.set_progress_handler(self._over_budget, PROGRESS_STEPS)

    @property
    def driver(self) -> aiosqlite.Connection:
        """The aiosqlite connection (its thread and sqlite3 connection)."""
        return self._connection  # type: ignore[return-value]

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (opened for use from any thread)."""
        connection: sqlite3.Connection = self.driver._conn
        return connection

    def _over_budget(self) -> int:
        if time.thread_time() > self._deadline:
            self._interrupted = True
            return 1
        return 0

    async def run(self, operation: str, parameters: Any, many: bool) -> _Outcome:
        """Run a statement, retrying while another process holds the lock.

        On the loop; a SELECT over its budget again in the connection's thread.
        """
        budgeted = _interruptible(operation, self.sqlite.in_transaction)
        return await self._retrying_busy(
            lambda: self._inline(operation, parameters, many, budgeted)
        )

    async def _inline(
        self, operation: str, parameters: Any, many: bool, budgeted: bool
    ) -> _Outcome:
        if budgeted:
            if self.dbapi.known_slow(operation):
                return await self._in_thread(operation, parameters, many)
            self._deadline = time.thread_time() + INLINE_READ_BUDGET
        try:
            return _execute(self.sqlite, operation, parameters, many)
        except sqlite3.OperationalError:
            if not self._interrupted:
                raise
        finally:
            self._deadline = math.inf
            self._interrupted = False
        # Only a read interrupted by its budget gets here: again, in the thread.
        self.dbapi.slow(operation)
        return await self._in_thread(operation, parameters, many)

    async def _in_thread(self, operation: str, parameters: Any, many: bool) -> _Outcome:
        # aiosqlite's own queue to its thread (untyped, hence the ignore).
        outcome: _Outcome = await self.driver._execute(  # type: ignore[no-untyped-call]
            _execute, self.sqlite, operation, parameters, many
        )
        return outcome

    async def _retrying_busy(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until it is not SQLITE_BUSY or the busy timeout passed."""
        give_up = time.monotonic() + self.dbapi.busy_timeout
        pause = _RETRY_FIRST
        while True:
            try:
                return await attempt()
            except sqlite3.OperationalError as error:
                if not _busy(error) or time.monotonic() + pause > give_up:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX)

    async def take_write_lock(self) -> None:
        """Wait (at most the busy timeout) until no other connection writes.

        Raises:
            sqlite3.OperationalError: "database is locked", as SQLite says it.
        """
        if self.holds_write_lock:
            return
        try:
            # Not wait_for: that wraps the wait in a task of its own, a few more
            # trips through the loop per hand-over while writers queue.
            async with asyncio.timeout(self.dbapi.busy_timeout):
                await self.dbapi.write_lock.acquire()
        except TimeoutError as exc:
            locked = sqlite3.OperationalError("database is locked")
            # As SQLite's own error says it, so callers tell it by its code.
            locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
            locked.sqlite_errorname = "SQLITE_BUSY"
            raise locked from exc
        self.holds_write_lock = True

    def release_write_lock(self) -> None:
        """Let the next writer in (after COMMIT or ROLLBACK)."""
        if self.holds_write_lock:
            self.holds_write_lock = False
            self.dbapi.write_lock.release()

    def cursor(self, server_side: bool = False) -> Any:
        """A cursor; a server-side one may open a transaction we cannot see."""
        if server_side:
            self.in_transaction = True
        return super().cursor(server_side)

    async def _end(self, end: Callable[[], None]) -> None:
        async def attempt() -> None:
            end()

        await self._retrying_busy(attempt)

    def commit(self) -> None:
        """COMMIT on the loop, unless no transaction is open.

        A due checkpoint runs before the write lock goes: with no writer
        appending meanwhile, it copies the whole log, and the next write
        starts the log over instead of growing it.
        """
        try:
            if self.in_transaction:
                await_(self._end(self.sqlite.commit))
                self.in_transaction = False
            if self.holds_write_lock and self.dbapi.checkpoint_due():
                self._checkpoint()
        except Exception as error:
            self._handle_exception(error)
        finally:
            self.release_write_lock()

    def rollback(self) -> None:
        """ROLLBACK on the loop, unless no transaction is open."""
        try:
            if self.in_transaction:
                await_(self._end(self.sqlite.rollback))
                self.in_transaction = False
        except Exception as error:
            self._handle_exception(error)
        finally:
            self.release_write_lock()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database, in this connection's thread."""
        # aiosqlite's own queue to its thread (untyped, hence the ignore).
        await_(self.driver._execute(_checkpoint, self.sqlite))  # type: ignore[no-untyped-call]

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


class InlineDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DB-API module of SQLAlchemy, connecting `InlineConnection`s.

    One per engine: its write lock and checkpoint count are the engine's.
    """

    def __init__(self, busy_timeout: float) -> None:
        """Set up the module; `busy_timeout` (seconds) bounds a wait to write."""
        super().__init__(aiosqlite, sqlite3)
        self.busy_timeout = busy_timeout
        self.write_lock = asyncio.Lock()
        self._commits = 0
        self._slow: dict[str, int] = {}

    def slow(self, operation: str) -> None:
        """Remember that `operation` went over its budget on the loop."""
        if len(self._slow) >= _SLOW_STATEMENTS_KEPT:
            self._slow.clear()  # statements are cached SQL: rarely reached
        self._slow[operation] = SLOW_RUNS_IN_THREAD

    def known_slow(self, operation: str) -> bool:
        """Whether `operation` recently went over its budget (then count a run).

        Such a statement goes straight to the thread for its next
        `SLOW_RUNS_IN_THREAD` runs (instead of spending the budget first each
        time), then gets another try on the loop: the data may have changed.
        """
        runs = self._slow.get(operation)
        if runs is None:
            return False
        if runs <= 1:
            del self._slow[operation]
        else:
            self._slow[operation] = runs - 1
        return True

    def checkpoint_due(self) -> bool:
        """Count a write commit; true once every `CHECKPOINT_EVERY`."""
        self._commits += 1
        if self._commits < CHECKPOINT_EVERY:
            return False
        self._commits = 0
        return True

    def connect(self, *arg: Any, **kw: Any) -> InlineConnection:
        """Open an aiosqlite connection (a daemon thread) and adapt it.

        SQLite's busy handler is off (`timeout=0`): waits happen in asyncio.
        """
        kw.update(check_same_thread=False, timeout=0)
        connection = self.aiosqlite.connect(*arg, **kw)
        # A forgotten connection must not keep the interpreter alive at exit.
        connection._thread.daemon = True
        adapted = InlineConnection(self, await_(connection))
        # Checkpoints are ours (see the module docstring); no-op off WAL.
        adapted.sqlite.execute("PRAGMA wal_autocheckpoint=0").close()
        return adapted


def dbapi(busy_timeout: float) -> InlineDBAPI:
    """The module to pass as `create_async_engine(..., module=...)`.

    Args:
        busy_timeout: Seconds a writer waits for another one (in this process
            or another) before "database is locked".
    """
    return InlineDBAPI(busy_timeout)
