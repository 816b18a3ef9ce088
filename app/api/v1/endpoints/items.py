"""Items: the example owned resource (CRUD, lists, ETags, idempotency, files)."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Response, UploadFile, status
from fastapi.responses import StreamingResponse

from app.api.deps import (
    DatabaseDep,
    ItemCreatorDep,
    ReadSessionDep,
    ResourceId,
    SessionDep,
    SettingsDep,
    StorageDep,
    require,
)
from app.api.item_params import ItemListOffsetParams, ItemListOffsetQuery
from app.core.conditional import etag, parse_if_match
from app.core.exceptions import ERROR_RESPONSE
from app.core.files import ACCEPTED_TYPES
from app.core.principal import Principal
from app.core.responses import FastJSONResponse
from app.core.scopes import (
    ITEMS_DELETE,
    ITEMS_MODERATE,
    ITEMS_READ,
    ITEMS_WRITE,
    USERS_READ,
)
from app.database import Database
from app.schemas.envelope import Envelope, Page, success
from app.schemas.item import (
    AttachmentPublic,
    ItemBulkCreate,
    ItemCreate,
    ItemPublic,
    ItemUpdate,
)
from app.services import attachments, items
from app.services.attachments import Upload

router = APIRouter(tags=["items"])

ATTACHMENT_UPLOAD_PATH = re.compile(r"^/api/v1/items/\d+/attachments$")
SUCCESSOR = "/api/v2/items"
# RFC 9745 / RFC 8594: deprecated since this release, removed no sooner than this.
DEPRECATION = "@1795737600"  # 2026-11-26T00:00:00Z
SUNSET = "Sat, 30 May 2027 00:00:00 GMT"

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**ERROR_RESPONSE, "description": "Not authenticated"},
    403: {**ERROR_RESPONSE, "description": "Missing scope, or not allowed"},
    404: {**ERROR_RESPONSE, "description": "Item not found (or not yours)"},
}
CONDITIONAL_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {**ERROR_RESPONSE, "description": "Modified concurrently (no If-Match)"},
    412: {**ERROR_RESPONSE, "description": "PRECONDITION_FAILED: stale If-Match"},
}
# A download answers with the type read from the file's bytes at upload.
DOWNLOAD_RESPONSE: dict[str, Any] = {
    "description": "The file's bytes, with the type detected at upload",
    "content": {
        media_type: {"schema": {"type": "string", "format": "binary"}}
        for media_type in ACCEPTED_TYPES
    },
}
IfMatchHeader = Annotated[
    str | None,
    Header(alias="If-Match", description="ETag from GET; 412 when it is stale"),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Replays the first answer for the same key and body (24 h)",
    ),
]
Reader = Annotated[Principal, require(ITEMS_READ)]
Writer = Annotated[Principal, require(ITEMS_WRITE)]


async def page_response(
    database: Database,
    owner_id: int,
    query: ItemListOffsetQuery,
    headers: dict[str, str] | None = None,
) -> FastJSONResponse:
    """A page of `owner_id`'s items in the envelope, serialised straight by orjson.

    The rows come from the database through its constraints; validating 100
    of them again through pydantic (as a response model would) doubles the
    cost of a list for nothing. The route still declares the response model,
    so the OpenAPI document shows the real schema.
    """
    found = await items.list_items(
        database.reader,
        owner_id,
        query.filters(),
        limit=query.limit,
        offset=query.offset,
        cursor=query.cursor,
    )
    page = {
        "items": found.items,
        "total": found.total,
        "limit": query.limit,
        "offset": query.offset,
        "next_cursor": found.next_cursor,
    }
    return FastJSONResponse(success(page), headers=headers)


@router.post(
    "/items",
    status_code=status.HTTP_201_CREATED,
    summary="Create an item",
    responses={
        **ERRORS,
        422: {
            **ERROR_RESPONSE,
            "description": "VALIDATION_ERROR, IDEMPOTENCY_KEY_REUSED",
        },
    },
    response_model=Envelope[ItemPublic],
)
async def create_item(
    payload: ItemCreate,
    principal: Writer,
    creator: ItemCreatorDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FastJSONResponse:
    """Create an item owned by the caller; with `Idempotency-Key`, safely retried."""
    created = await creator.create(principal, payload, idempotency_key)
    headers = {
        "ETag": etag(created.item.version),
        "Location": f"/api/v1/items/{created.item.id}",
    }
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    # The item was validated as it was made: no response model to check it again.
    return FastJSONResponse(
        success(created.item.model_dump(mode="json")),
        status_code=status.HTTP_201_CREATED,
        headers=headers,
    )


@router.post(
    "/items/bulk",
    status_code=status.HTTP_201_CREATED,
    summary="Create up to 100 items at once (all or nothing)",
    responses=ERRORS,
)
async def create_items(
    payload: ItemBulkCreate,
    principal: Writer,
    creator: ItemCreatorDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Envelope[list[ItemPublic]]:
    """Create every item in one transaction, or none; `Idempotency-Key` as one."""
    created, replayed = await creator.create_many(
        principal, payload.items, idempotency_key
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return Envelope(data=created)


@router.get(
    "/items",
    summary="List my items (deprecated: use /api/v2/items)",
    responses=ERRORS,
    response_model=Envelope[Page[ItemPublic]],
)
async def list_my_items(
    principal: Reader, database: DatabaseDep, query: ItemListOffsetParams
) -> FastJSONResponse:
    """The caller's items, with `total`; `offset` paging or keyset `cursor`."""
    return await page_response(
        database,
        principal.user_id,
        query,
        headers={
            "Deprecation": DEPRECATION,
            "Sunset": SUNSET,
            "Link": f'<{SUCCESSOR}>; rel="successor-version"',
        },
    )


@router.get(
    "/users/{user_id}/items",
    summary="List a user's items (moderators, admins)",
    responses=ERRORS,
    response_model=Envelope[Page[ItemPublic]],
)
async def list_user_items(
    user_id: ResourceId,
    principal: Annotated[Principal, require(ITEMS_READ, ITEMS_MODERATE, USERS_READ)],
    database: DatabaseDep,
    query: ItemListOffsetParams,
) -> FastJSONResponse:
    """Any user's items, for moderation."""
    return await page_response(database, user_id, query)


@router.get(
    "/items/{item_id}",
    summary="Read an item",
    responses=ERRORS,
    response_model=Envelope[ItemPublic],
)
async def read_item(
    item_id: ResourceId, principal: Reader, database: DatabaseDep
) -> FastJSONResponse:
    """An item, with its `ETag` for a later conditional PATCH or DELETE."""
    view = await items.read_item(database.reader, principal, item_id)
    return FastJSONResponse(success(view.json), headers={"ETag": etag(view.version)})


@router.patch(
    "/items/{item_id}",
    summary="Update an item",
    responses=CONDITIONAL_ERRORS,
    response_model=Envelope[ItemPublic],
)
async def update_item(
    item_id: ResourceId,
    payload: ItemUpdate,
    principal: Writer,
    session: SessionDep,
    if_match: IfMatchHeader = None,
) -> FastJSONResponse:
    """Change an item; send `If-Match` to be told (412) if someone else changed it."""
    item = await items.update_item(
        session, principal, item_id, payload, parse_if_match(if_match)
    )
    # Validated as it was read back: no response model to check it again.
    return FastJSONResponse(
        success(item.model_dump(mode="json")), headers={"ETag": etag(item.version)}
    )


@router.delete(
    "/items/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an item",
    responses=CONDITIONAL_ERRORS,
)
async def delete_item(
    item_id: ResourceId,
    principal: Annotated[Principal, require(ITEMS_DELETE)],
    session: SessionDep,
    storage: StorageDep,
    if_match: IfMatchHeader = None,
) -> None:
    """Delete an item and its files (owner, or an administrator)."""
    await items.delete_item(
        session, principal, storage, item_id, parse_if_match(if_match)
    )


@router.post(
    "/items/{item_id}/attachments",
    status_code=status.HTTP_201_CREATED,
    summary="Attach a file",
    responses={
        **ERRORS,
        413: {**ERROR_RESPONSE, "description": "File over ATTACHMENT_MAX_BYTES"},
        415: {**ERROR_RESPONSE, "description": "Not an accepted type (by content)"},
    },
)
async def upload_attachment(
    item_id: ResourceId,
    file: UploadFile,
    principal: Writer,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> Envelope[AttachmentPublic]:
    """Upload a file (multipart field `file`); its type is read from its bytes."""
    upload = Upload(file=file.file, filename=file.filename, size=file.size or 0)
    attachment = await attachments.attach(
        session, principal, storage, item_id, upload, settings.ATTACHMENT_MAX_BYTES
    )
    return Envelope(data=AttachmentPublic.model_validate(attachment))


@router.get(
    "/items/{item_id}/attachments", summary="List an item's files", responses=ERRORS
)
async def list_attachments(
    item_id: ResourceId, principal: Reader, session: ReadSessionDep
) -> Envelope[list[AttachmentPublic]]:
    """Metadata of every file attached to the item."""
    found = await attachments.list_attachments(session, principal, item_id)
    return Envelope(data=[AttachmentPublic.model_validate(a) for a in found])


@router.get(
    "/items/{item_id}/attachments/{attachment_id}",
    summary="Download a file",
    response_class=StreamingResponse,
    responses={**ERRORS, 200: DOWNLOAD_RESPONSE},
)
async def download_attachment(
    item_id: ResourceId,
    attachment_id: ResourceId,
    principal: Reader,
    session: ReadSessionDep,
    storage: StorageDep,
) -> StreamingResponse:
    """Stream the file, as an attachment (never rendered inline)."""
    found = await attachments.download(
        session, principal, storage, item_id, attachment_id
    )
    meta = found.attachment
    disposition = f"attachment; filename=\"{meta.filename}\"; filename*=UTF-8''{quote(meta.filename)}"
    return StreamingResponse(
        found.chunks,
        media_type=meta.content_type,
        headers={
            "Content-Length": str(meta.size),
            "Content-Disposition": disposition,
            "ETag": f'"{meta.sha256}"',
            "Cache-Control": "private, no-cache",
        },
    )


@router.delete(
    "/items/{item_id}/attachments/{attachment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a file",
    responses=ERRORS,
)
async def delete_attachment(
    item_id: ResourceId,
    attachment_id: ResourceId,
    principal: Annotated[Principal, require(ITEMS_DELETE)],
    session: SessionDep,
    storage: StorageDep,
) -> None:
    """Remove the file and its metadata."""
    await attachments.remove(session, principal, storage, item_id, attachment_id)
