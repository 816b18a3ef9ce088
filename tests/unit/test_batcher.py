"""The batcher: concurrent calls share one batch, and each gets its own answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextvars import ContextVar

import pytest

from app.core.batcher import Batcher, OutcomeUnknownError

caller: ContextVar[str | None] = ContextVar("caller", default=None)


class Doubler:
    """A batch function that records its batches and fails on negative values."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.seen_caller: list[str | None] = []
        self.running = self.most_running = 0

    async def __call__(self, values: Sequence[int]) -> list[int]:
        self.batches.append(list(values))
        self.seen_caller.append(caller.get())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await asyncio.sleep(0.01)  # a transaction takes a while
        self.running -= 1
        if any(value < 0 for value in values):
            raise ValueError(f"negative in {list(values)}")
        return [value * 2 for value in values]


async def test_calls_made_together_run_as_one_batch() -> None:
    run = Doubler()
    batcher = Batcher(run)

    results = await asyncio.gather(*(batcher.submit(value) for value in range(10)))

    assert results == [value * 2 for value in range(10)]
    assert run.batches == [list(range(10))]


async def test_a_lone_call_runs_at_once_by_itself() -> None:
    run = Doubler()
    batcher = Batcher(run)

    assert await batcher.submit(3) == 6
    assert await batcher.submit(4) == 8
    assert run.batches == [[3], [4]]


async def test_calls_arriving_during_a_batch_form_the_next_one() -> None:
    run = Doubler()
    batcher = Batcher(run)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.005)  # the first batch is running now

    later = await asyncio.gather(*(batcher.submit(value) for value in (2, 3, 4)))

    assert await first == 2
    assert later == [4, 6, 8]
    assert run.batches == [[1], [2, 3, 4]]


async def test_one_batch_at_a_time_by_default() -> None:
    run = Doubler()
    batcher = Batcher(run, max_batch=2)

    await asyncio.gather(*(batcher.submit(value) for value in range(6)))

    assert run.batches == [[0, 1], [2, 3], [4, 5]]
    assert run.most_running == 1


async def test_with_concurrency_a_batch_starts_while_another_runs() -> None:
    run = Doubler()
    batcher = Batcher(run, concurrency=2)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.002)  # the first batch waits on its "database"

    assert await asyncio.gather(batcher.submit(2), batcher.submit(3)) == [4, 6]
    assert await first == 2
    assert run.batches == [[1], [2, 3]]
    assert run.most_running == 2


async def test_batches_are_no_larger_than_the_limit() -> None:
    run = Doubler()
    batcher = Batcher(run, max_batch=10)

    results = await asyncio.gather(*(batcher.submit(value) for value in range(25)))

    assert results == [value * 2 for value in range(25)]
    assert [len(batch) for batch in run.batches] == [10, 10, 5]


async def test_a_failing_call_fails_alone_and_the_others_succeed() -> None:
    run = Doubler()
    batcher = Batcher(run)

    results = await asyncio.gather(
        *(batcher.submit(value) for value in (1, -1, 2)), return_exceptions=True
    )

    assert results[0] == 2
    assert results[2] == 4
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "negative in [-1]"
    # The whole batch first, then each value again on its own.
    assert run.batches == [[1, -1, 2], [1], [-1], [2]]


async def test_a_batch_that_may_have_taken_effect_is_never_run_again() -> None:
    batches: list[list[int]] = []

    async def commit_then_fail(values: Sequence[int]) -> list[int]:
        batches.append(list(values))
        # e.g. the COMMIT went through, then the connection broke
        raise OutcomeUnknownError from ConnectionResetError("lost after COMMIT")

    batcher = Batcher(commit_then_fail)
    results = await asyncio.gather(
        *(batcher.submit(value) for value in (1, 2, 3)), return_exceptions=True
    )

    # Run once: running each value again could do its work twice.
    assert batches == [[1, 2, 3]]
    # Each caller hears that the outcome is unknown, with the cause chained.
    assert all(isinstance(result, OutcomeUnknownError) for result in results)
    assert all(isinstance(r.__cause__, ConnectionResetError) for r in results)


async def test_when_every_call_fails_the_callers_wait_for_one_failure() -> None:
    async def locked(values: Sequence[int]) -> list[int]:
        await asyncio.sleep(0.1)  # a writer waiting out its busy timeout
        raise TimeoutError("database is locked")

    batcher: Batcher[int, int] = Batcher(locked)
    started = time.monotonic()

    results = await asyncio.gather(
        *(batcher.submit(value) for value in range(20)), return_exceptions=True
    )

    assert all(isinstance(result, TimeoutError) for result in results)
    # The batch, then the twenty retries side by side: 0.2 s, not 2.1 s.
    assert time.monotonic() - started < 1.0


async def test_a_caller_cancelled_before_its_batch_is_left_out() -> None:
    run = Doubler()
    batcher = Batcher(run)
    kept = asyncio.ensure_future(batcher.submit(1))
    dropped = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)  # both are waiting; the batch has not started
    dropped.cancel()

    assert await kept == 2
    assert dropped.cancelled()
    assert run.batches == [[1]]


async def test_stopping_the_batcher_cancels_its_callers() -> None:
    started = asyncio.Event()

    async def never_done(values: Sequence[int]) -> list[int]:
        started.set()
        await asyncio.sleep(3600)
        return list(values)

    batcher: Batcher[int, int] = Batcher(never_done)
    running = asyncio.ensure_future(batcher.submit(1))
    await started.wait()
    waiting = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    drain = next(
        task for task in asyncio.all_tasks() if task.get_coro().__name__ == "_drain"
    )

    drain.cancel()

    for call in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await call


async def test_a_batch_runs_outside_its_callers_context() -> None:
    run = Doubler()
    batcher = Batcher(run)

    async def submit_as(name: str, value: int) -> int:
        caller.set(name)
        return await batcher.submit(value)

    await asyncio.gather(submit_as("first", 1), submit_as("second", 2))

    # Whatever runs for the batch (its log lines) is no one request's.
    assert run.seen_caller == [None]
