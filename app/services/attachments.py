"""Files attached to items: checked by content, stored by key, audited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import (
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from app.core.files import SNIFF_BYTES, safe_filename, sniff_content_type
from app.core.principal import Principal
from app.core.scopes import ADMIN_ALL
from app.core.storage import FileStorage
from app.models.item import Attachment
from app.repositories.attachments import AttachmentRepository
from app.services import audit
from app.services.items import ItemNotFoundError, get_item


@dataclass(frozen=True, slots=True)
class Upload:
    """An uploaded file as the route received it."""

    file: BinaryIO
    filename: str | None
    size: int


@dataclass(frozen=True, slots=True)
class Download:
    """What a download streams, with its metadata."""

    attachment: Attachment
    chunks: AsyncIterator[bytes]


async def attach(
    session: AsyncSession,
    principal: Principal,
    storage: FileStorage,
    item_id: int,
    upload: Upload,
    max_bytes: int,
) -> Attachment:
    """Store an uploaded file on an item.

    Raises:
        ItemNotFoundError: Missing or invisible item.
        PayloadTooLargeError: Over `max_bytes`.
        UnsupportedMediaTypeError: The bytes are not an accepted type.
    """
    item_id = (await get_item(session, principal, item_id)).id
    if upload.size > max_bytes:
        raise PayloadTooLargeError(f"Files may be at most {max_bytes} bytes")
    head = upload.file.read(SNIFF_BYTES)
    upload.file.seek(0)
    content_type = sniff_content_type(head)
    if content_type is None:
        raise UnsupportedMediaTypeError(
            "Accepted: PNG, JPEG, GIF, WebP, PDF and UTF-8 text"
        )
    stored = await storage.save(upload.file)
    attachment = Attachment(
        item_id=item_id,
        filename=safe_filename(upload.filename),
        content_type=content_type,
        size=stored.size,
        sha256=stored.sha256,
        storage_key=stored.key,
        created_by_id=principal.user_id,
    )
    try:
        await AttachmentRepository(session).add(attachment)
        await _audit(session, principal, "attachment.create", attachment, created=True)
        await session.commit()
    except IntegrityError as exc:
        await storage.delete(stored.key)
        # The only reference it can break: the item was deleted meanwhile.
        raise ItemNotFoundError from exc
    except BaseException:
        await storage.delete(stored.key)  # no orphan file for a failed write
        raise
    return attachment


async def _audit(
    session: AsyncSession,
    principal: Principal,
    action: str,
    attachment: Attachment,
    *,
    created: bool,
) -> None:
    fields = {
        "item_id": attachment.item_id,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
    }
    await audit.record(
        session,
        actor=principal,
        action=action,
        entity_type="attachment",
        entity_id=attachment.id,
        changes=audit.diff(None, fields) if created else audit.diff(fields, None),
    )


async def list_attachments(
    session: AsyncSession, principal: Principal, item_id: int
) -> Sequence[Attachment]:
    """Attachments of an item the caller may see."""
    item = await get_item(session, principal, item_id)
    return await AttachmentRepository(session).for_item(item.id)


async def _find(
    session: AsyncSession, principal: Principal, item_id: int, attachment_id: int
) -> Attachment:
    item = await get_item(session, principal, item_id)
    attachment = await AttachmentRepository(session).get(item.id, attachment_id)
    if attachment is None:
        raise NotFoundError("Attachment not found")
    return attachment


async def download(
    session: AsyncSession,
    principal: Principal,
    storage: FileStorage,
    item_id: int,
    attachment_id: int,
) -> Download:
    """Metadata and a byte stream of an attachment the caller may see."""
    attachment = await _find(session, principal, item_id, attachment_id)
    return Download(attachment, storage.open(attachment.storage_key))


async def remove(
    session: AsyncSession,
    principal: Principal,
    storage: FileStorage,
    item_id: int,
    attachment_id: int,
) -> None:
    """Delete an attachment (item owner, or `admin:all`)."""
    attachment = await _find(session, principal, item_id, attachment_id)
    item = await get_item(session, principal, item_id)
    if item.owner_id != principal.user_id and not principal.has(ADMIN_ALL):
        raise ForbiddenError("Only the owner or an administrator may delete files")
    if not await AttachmentRepository(session).delete(attachment):
        raise NotFoundError("Attachment not found")  # deleted meanwhile, once
    await _audit(session, principal, "attachment.delete", attachment, created=False)
    await session.commit()
    await storage.delete(attachment.storage_key)
