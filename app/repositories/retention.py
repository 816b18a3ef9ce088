"""Rows that have ended and been kept long enough: what housekeeping deletes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import ColumnElement, CursorResult, Table, and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.auth_session import AuthSession
from app.models.idempotency import IdempotencyKey
from app.models.outbox import ActionToken, OutboxEvent, ProcessedEvent


@dataclass(frozen=True)
class Cutoffs:
    """The moments before which each kind of ended row may go."""

    ended: datetime
    """Done events, revoked or expired sessions, used or expired tokens."""
    idle_session_used: datetime
    """A session last used before this idled out more than the retention ago."""
    processed: datetime
    """Handlers' processed-event records."""
    idempotency: datetime
    """Idempotency keys (they are no longer replayed after their TTL)."""


@dataclass(frozen=True)
class Prunable:
    """One table and which of its rows may be deleted."""

    table: Table
    condition: ColumnElement[bool]


def prunable(cutoffs: Cutoffs) -> dict[str, Prunable]:
    """What may be deleted, by table name.

    Events not done (unpublished, given up on by the relay, or published and
    not yet handled) never match: a NULL `done_at` compares as unknown; the
    `published_at` bound lets the scan use its index. A session's refresh tokens go with it
    (`ON DELETE CASCADE`). The audit log is not here: it is append-only.
    """
    kinds = {
        OutboxEvent: and_(
            OutboxEvent.published_at < cutoffs.ended,
            OutboxEvent.done_at < cutoffs.ended,
        ),
        ProcessedEvent: ProcessedEvent.processed_at < cutoffs.processed,
        AuthSession: or_(
            AuthSession.revoked_at < cutoffs.ended,
            AuthSession.expires_at < cutoffs.ended,
            AuthSession.last_used_at < cutoffs.idle_session_used,
        ),
        ActionToken: or_(
            ActionToken.used_at < cutoffs.ended, ActionToken.expires_at < cutoffs.ended
        ),
        IdempotencyKey: IdempotencyKey.created_at < cutoffs.idempotency,
    }
    return {
        model.__tablename__: Prunable(cast("Table", model.__table__), condition)
        for model, condition in kinds.items()
    }


async def delete_batch(session: AsyncSession, target: Prunable, limit: int) -> int:
    """Delete up to `limit` matching rows in the caller's transaction.

    Bounded so that one transaction never holds many locks (or, on SQLite, the
    single writer's lock) for long.

    Returns:
        How many rows were deleted.
    """
    key = target.table.c.id
    # Rows another pruner is deleting are skipped, not waited for (PostgreSQL;
    # SQLite has one writer at a time): two passes at once never deadlock.
    chosen = (
        select(key)
        .where(target.condition)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(delete(target.table).where(key.in_(chosen)))
    return cast("CursorResult[tuple[()]]", result).rowcount
