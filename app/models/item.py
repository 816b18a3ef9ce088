"""Items: the example owned resource, and their attachments."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.domain import ItemStatus
from app.models.base import Base, utcnow

STATUS_VALUES = ", ".join(f"'{status.value}'" for status in ItemStatus)


class Item(Base):
    """Something a user owns. `version` drives ETags and optimistic locking."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(
        String(20),
        default=ItemStatus.DRAFT.value,
        server_default=ItemStatus.DRAFT.value,
    )
    # An owner's items go with the owner (hard delete = erasure); the audit log,
    # which has no foreign keys, keeps the history.
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Editors may be erased too; their names stay on the row, the link goes.
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_by_name: Mapped[str] = mapped_column(String(255))
    updated_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    updated_by_name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    version: Mapped[int] = mapped_column(default=1, server_default="1")

    __table_args__ = (
        CheckConstraint("length(title) >= 1", name="title_not_empty"),
        CheckConstraint(f"status IN ({STATUS_VALUES})", name="status_valid"),
        CheckConstraint("version >= 1", name="version_positive"),
        # Keyset pagination of "my items" by each sortable column, id as tiebreak.
        Index("ix_items_owner_created", "owner_id", "created_at", "id"),
        Index("ix_items_owner_updated", "owner_id", "updated_at", "id"),
        Index("ix_items_owner_title", "owner_id", "title", "id"),
        Index("ix_items_owner_status_created", "owner_id", "status", "created_at"),
    )
    # Every UPDATE/DELETE says `WHERE version = <read version>`: a concurrent
    # writer makes it match nothing instead of being overwritten. The ORM does
    # this for entities (StaleDataError); PATCH's Core UPDATE says it itself
    # (ItemRepository.update_if_version).
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - SQLAlchemy API


class Attachment(Base):
    """A file attached to an item; bytes live in the file storage, not here."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), index=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
