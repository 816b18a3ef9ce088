"""Run calls that arrive together as one batch (group commit).

A write transaction costs about the same for one row as for twenty: the
statements, the COMMIT and the driver's round trips dominate, not the rows.
When many requests write at once, a `Batcher` lets one task run the work of
every request waiting at that moment in one call, and hands each caller its
own result. Under no load a call runs alone, at once; under load the batches
grow by themselves (while one batch runs, the next one gathers).

Each caller still gets all-or-nothing for its own work: when a batch fails,
every value in it runs again alone, so only the calls that fail by themselves
see an error. Unless the batch may have taken effect (an error during or after
its COMMIT, `OutcomeUnknownError`): running it again could do the work twice,
so every caller gets the error instead.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

RunBatch = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class OutcomeUnknownError(Exception):
    """Raised by a batch that may have taken effect (raise it `from` the cause).

    Its values are not run again; each caller gets this error (the cause
    chained), so that nobody answers it as "try again": the work may be done.
    """


class Batcher(Generic[T, R]):
    """Gathers concurrent `submit`s into calls of `run_batch`.

    `run_batch(values)` must return one result per value, in order, and do
    all of its work or none (one transaction). One batcher serves one event
    loop.
    """

    def __init__(
        self, run_batch: RunBatch[T, R], *, max_batch: int = 100, concurrency: int = 1
    ) -> None:
        """Batch calls of `run_batch`.

        Args:
            run_batch: Does the work of a batch (see the class).
            max_batch: Most values in one call.
            concurrency: Most calls running at once. Above 1, a batch can
                gather and start while another waits on the database (its
                COMMIT, a network round trip).
        """
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drainers: set[asyncio.Task[None]] = set()

    async def submit(self, value: T) -> R:
        """Run `value` with whatever else is waiting; its own result or error.

        A caller cancelled before its batch starts is left out of it; one
        cancelled later does not stop the batch (its work is done, as for a
        request whose client went away after the commit).
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((value, future))
        if len(self._drainers) < self._concurrency:
            # A context of its own: the batch is no one request's (logs, ids).
            drainer = asyncio.create_task(self._drain(), context=contextvars.Context())
            self._drainers.add(drainer)
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                # One turn of the loop first: requests read in the same turn join.
                await asyncio.sleep(0)
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._run([entry for entry in batch if not entry[1].done()])
        except asyncio.CancelledError:
            # Shut down: nobody is left to answer the callers still waiting.
            if self._drainers <= {asyncio.current_task()}:
                for _, future in self._waiting:
                    future.cancel()
                self._waiting.clear()
            raise
        finally:
            # At once (a done-callback runs a turn later): a caller arriving
            # meanwhile must see that this drainer has stopped taking work.
            self._drainers.discard(asyncio.current_task())

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        if not batch:
            return
        try:
            results = await self._run_batch([value for value, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except OutcomeUnknownError as unknown:
            for _, future in batch:
                _fail(future, unknown)
            return
        except Exception as error:  # handed to the callers below
            if len(batch) == 1:
                _fail(batch[0][1], error)
                return
            # Side by side: when every value fails (the database is locked
            # or gone), the callers wait for one failure, not one after another.
            await asyncio.gather(*(self._run([entry]) for entry in batch))
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(future: asyncio.Future[R], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
