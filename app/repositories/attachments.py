"""Queries of attachments. Flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.item import Attachment


class AttachmentRepository:
    """Load and store attachment metadata."""

    def __init__(self, session: AsyncSession) -> None:
        """Bind to the request's session."""
        self.session = session

    async def add(self, attachment: Attachment) -> None:
        """Insert and flush."""
        self.session.add(attachment)
        await self.session.flush()

    async def get(self, item_id: int, attachment_id: int) -> Attachment | None:
        """The attachment of this item with this id, or None."""
        statement = select(Attachment).where(
            Attachment.id == attachment_id, Attachment.item_id == item_id
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def for_item(self, item_id: int) -> Sequence[Attachment]:
        """All attachments of an item, oldest first."""
        statement = (
            select(Attachment)
            .where(Attachment.item_id == item_id)
            .order_by(Attachment.id)
        )
        return (await self.session.execute(statement)).scalars().all()

    async def delete(self, attachment: Attachment) -> bool:
        """Delete the row; False when a concurrent request deleted it first."""
        result = await self.session.execute(
            delete(Attachment)
            .where(Attachment.id == attachment.id)
            .execution_options(synchronize_session=False)
        )
        return cast("CursorResult[tuple[()]]", result).rowcount == 1
