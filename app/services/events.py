"""Record domain events in the outbox, in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.events import Event
from app.models.base import utcnow
from app.models.outbox import OutboxEvent
from app.repositories import outbox


def outbox_row(
    event_type: str,
    aggregate_type: str,
    aggregate_id: object,
    payload: dict[str, Any],
) -> dict[str, Any]:
    """One outbox row, to write with `emit_all`.

    Args:
        event_type: e.g. `user.created`.
        aggregate_type: e.g. `user`.
        aggregate_id: The aggregate's id; events of one aggregate keep their order.
        payload: JSON-serialisable facts handlers need (no secrets).

    Returns:
        The row's values (a new event id, occurred now).
    """
    return {
        "event_id": uuid.uuid4().hex,
        "event_type": event_type,
        "aggregate_type": aggregate_type,
        "aggregate_id": str(aggregate_id),
        "payload": payload,
        "occurred_at": utcnow(),
    }


async def emit(
    session: AsyncSession,
    event_type: str,
    aggregate_type: str,
    aggregate_id: object,
    payload: dict[str, Any],
) -> None:
    """Write an event to the outbox; it is committed (or not) with the change.

    Args:
        session: The transaction of the change the event announces.
        event_type: e.g. `user.created`.
        aggregate_type: e.g. `user`.
        aggregate_id: The aggregate's id; events of one aggregate keep their order.
        payload: JSON-serialisable facts handlers need (no secrets).
    """
    await emit_all(
        session, [outbox_row(event_type, aggregate_type, aggregate_id, payload)]
    )


async def emit_all(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write outbox rows made by `outbox_row` in the caller's transaction."""
    await outbox.append(session, rows)


async def emit_user_event(session: AsyncSession, event_type: str, user_id: int) -> None:
    """Write a `user` event whose payload is just the user's id (handlers reload it)."""
    await emit(session, event_type, "user", user_id, {"user_id": user_id})


def to_event(row: OutboxEvent) -> Event:
    """The wire form of an outbox row."""
    return Event(
        event_id=row.event_id,
        event_type=row.event_type,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        occurred_at=row.occurred_at,
        payload=row.payload,
    )
