"""Outbox rows: claim, mark published and done, find lost ones, measure backlog."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Table,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.models.outbox import OutboxEvent, ProcessedEvent

# A Core INSERT on the table, with the values as parameters (see audit.append).
_INSERT = insert(cast("Table", OutboxEvent.__table__))


async def append(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert outbox rows in the caller's transaction (committed with them)."""
    await session.execute(_INSERT, list(rows))


def _deliverable(max_attempts: int) -> ColumnElement[bool]:
    # `done_at`: a worker may have handled an event whose publication the relay
    # failed to record (its commit after XADD failed): that one needs nothing.
    return and_(
        OutboxEvent.published_at.is_(None),
        OutboxEvent.done_at.is_(None),
        OutboxEvent.attempts < max_attempts,
    )


async def claim_batch(
    session: AsyncSession,
    now: datetime,
    *,
    limit: int,
    max_attempts: int,
    lease: timedelta,
) -> Sequence[OutboxEvent]:
    """Claim the next events to publish: the oldest unpublished one per aggregate.

    Taking only each aggregate's head keeps per-aggregate order even with
    several relays. On PostgreSQL `FOR UPDATE SKIP LOCKED` lets them share the
    work without waiting on each other (the locks last the transaction). SQLite
    has no row locks: there the claim is an UPDATE that moves the events'
    `next_attempt_at` to `now + lease`, which the caller commits at once so
    that every other relay (another `serve` worker on the same file) skips
    them; if this one dies, they are due again when the lease ends.
    """
    earlier = aliased(OutboxEvent)
    has_earlier = exists().where(
        earlier.aggregate_type == OutboxEvent.aggregate_type,
        earlier.aggregate_id == OutboxEvent.aggregate_id,
        earlier.published_at.is_(None),
        earlier.done_at.is_(None),
        earlier.attempts < max_attempts,
        earlier.id < OutboxEvent.id,
    )
    statement = (
        select(OutboxEvent)
        .where(
            _deliverable(max_attempts),
            or_(
                OutboxEvent.next_attempt_at.is_(None),
                OutboxEvent.next_attempt_at <= now,
            ),
            ~has_earlier,
        )
        .order_by(OutboxEvent.id)
        .limit(limit)
    )
    if claims_with_locks(session):
        statement = statement.with_for_update(skip_locked=True, of=OutboxEvent)
        return (await session.execute(statement)).scalars().all()
    chosen = statement.with_only_columns(OutboxEvent.id).scalar_subquery()
    claim = (
        update(OutboxEvent)
        .where(OutboxEvent.id.in_(chosen))
        .values(next_attempt_at=now + lease)
        .returning(OutboxEvent)
        .execution_options(synchronize_session=False)
    )
    claimed = (await session.execute(claim)).scalars().all()
    return sorted(claimed, key=lambda row: row.id)  # RETURNING has no order


def claims_with_locks(session: AsyncSession) -> bool:
    """Whether `claim_batch` holds its events by row locks (else by a lease)."""
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def backlog(
    session: AsyncSession, max_attempts: int
) -> tuple[int, datetime | None, int]:
    """Unpublished events, the oldest one's time, and dead (given-up) events."""
    pending = select(func.count(), func.min(OutboxEvent.occurred_at)).where(
        _deliverable(max_attempts)
    )
    dead = select(func.count()).where(
        OutboxEvent.published_at.is_(None), OutboxEvent.attempts >= max_attempts
    )
    count, oldest = (await session.execute(pending)).one()
    dead_count = (await session.execute(dead)).scalar_one()
    return int(count), oldest, int(dead_count)


async def mark_published(
    session: AsyncSession, event_ids: Sequence[int], now: datetime
) -> None:
    """Record the publication of events that need nothing more: they are done.

    They were handled in process, or no handler here waits for them.
    """
    if event_ids:
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(event_ids))
            .values(published_at=now, done_at=now)
            .execution_options(synchronize_session=False)
        )


async def mark_done(
    session: AsyncSession, event_id: str, now: datetime, error: str | None = None
) -> None:
    """Record that the worker is done with an event: handled, or dead-lettered."""
    values: dict[str, Any] = {"done_at": now}
    if error is not None:
        values["last_error"] = error[:2000]
    await session.execute(
        update(OutboxEvent)
        .where(OutboxEvent.event_id == event_id, OutboxEvent.done_at.is_(None))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def due_for_check(
    session: AsyncSession, now: datetime, *, limit: int
) -> Sequence[tuple[int, str | None]]:
    """Published events not done whose check is due: (row id, stream entry id)."""
    statement = (
        select(OutboxEvent.id, OutboxEvent.stream_id)
        .where(
            OutboxEvent.done_at.is_(None),
            OutboxEvent.published_at.is_not(None),
            OutboxEvent.next_attempt_at <= now,
        )
        .order_by(OutboxEvent.id)
        .limit(limit)
    )
    return [(row.id, row.stream_id) for row in await session.execute(statement)]


def _as_checked(checked: Sequence[tuple[int, str | None]]) -> ColumnElement[bool]:
    """Rows still published with the entry a relay checked, not done meanwhile.

    Another relay may have republished a row (a new entry) since this one read
    it: acting on the old entry then would publish the event once more.
    """
    return and_(
        or_(
            *(
                and_(OutboxEvent.id == row_id, OutboxEvent.stream_id == entry_id)
                for row_id, entry_id in checked
            )
        ),
        OutboxEvent.published_at.is_not(None),
        OutboxEvent.done_at.is_(None),
    )


async def unpublish(
    session: AsyncSession, checked: Sequence[tuple[int, str | None]]
) -> int:
    """Make published events due again (their stream entries were lost).

    Only rows still as `due_for_check` returned them (row id, stream entry id)
    change: events done meanwhile stay done, and one another relay has
    already published again keeps its new entry. Returns how many changed.
    """
    if not checked:
        return 0
    result = await session.execute(
        update(OutboxEvent)
        .where(_as_checked(checked))
        .values(published_at=None, stream_id=None, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    return cast("CursorResult[tuple[()]]", result).rowcount


async def check_later(
    session: AsyncSession, checked: Sequence[tuple[int, str | None]], when: datetime
) -> None:
    """Move the next check of published events (still in the stream) to `when`.

    As in `unpublish`, only rows still holding the entry that was found change:
    an event another relay has made due again is not held back.
    """
    if checked:
        await session.execute(
            update(OutboxEvent)
            .where(_as_checked(checked))
            .values(next_attempt_at=when)
            .execution_options(synchronize_session=False)
        )


async def already_processed(session: AsyncSession, handler: str, event_id: str) -> bool:
    """Whether `handler` has handled `event_id` before."""
    statement = select(ProcessedEvent.id).where(
        ProcessedEvent.handler == handler, ProcessedEvent.event_id == event_id
    )
    return (await session.execute(statement)).first() is not None


async def remember_processed(
    session: AsyncSession, handler: str, event_id: str
) -> bool:
    """Record that `handler` handled `event_id`; False if someone else just did."""
    session.add(ProcessedEvent(handler=handler, event_id=event_id))
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        return False
    return True
