"""The transactional outbox, and what event handlers have already done."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.audit import JsonDocument
from app.models.base import Base, utcnow


class OutboxEvent(Base):
    """A domain event, written in the transaction of the change it announces."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    event_type: Mapped[str] = mapped_column(String(50))
    aggregate_type: Mapped[str] = mapped_column(String(50))
    aggregate_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    # Done: handled by every handler here, or dead-lettered (on the embedded
    # default, and for events no handler here takes, when published).
    done_at: Mapped[datetime | None]
    # The Redis stream entry of a published event that is not done yet.
    stream_id: Mapped[str | None] = mapped_column(String(41))
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # Unpublished: when to try (again). Published, not done: when to check
    # that the stream still holds it.
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # The relay's scan: unpublished rows in order, and "is there an earlier
        # unpublished event of this aggregate?".
        Index("ix_outbox_events_unpublished", "published_at", "id"),
        Index(
            "ix_outbox_events_aggregate",
            "aggregate_type",
            "aggregate_id",
            "published_at",
            "id",
        ),
        # The relay's check for lost events: only rows not done, which are few.
        Index(
            "ix_outbox_events_not_done",
            "next_attempt_at",
            postgresql_where=text("done_at IS NULL"),
            sqlite_where=text("done_at IS NULL"),
        ),
    )


class ProcessedEvent(Base):
    """(handler, event) pairs already handled: redeliveries are ignored."""

    __tablename__ = "processed_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    handler: Mapped[str] = mapped_column(String(100))
    event_id: Mapped[str] = mapped_column(String(32))
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint(
            "handler", "event_id", name="uq_processed_events_handler_event"
        ),
        # Housekeeping deletes by age; without it every pass scans the table.
        Index("ix_processed_events_processed_at", "processed_at"),
    )


class ActionToken(Base):
    """A single-use emailed token (verification, password reset), hashed at rest."""

    __tablename__ = "action_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(
        # Tokens mean nothing without their user.
        ForeignKey("users.id", ondelete="CASCADE"),
        index=True,
    )
    purpose: Mapped[str] = mapped_column(String(30))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
