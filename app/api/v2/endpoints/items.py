"""Version 2 of the item list: keyset cursors are the only way to page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import DatabaseDep, require
from app.api.item_params import ItemListParams
from app.core.exceptions import ERROR_RESPONSE
from app.core.principal import Principal
from app.core.responses import FastJSONResponse
from app.core.scopes import ITEMS_READ
from app.schemas.envelope import Envelope, success
from app.schemas.item import ItemPublic
from app.services import items

router = APIRouter(tags=["items v2"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**ERROR_RESPONSE, "description": "Not authenticated"},
    403: {**ERROR_RESPONSE, "description": "Missing scope"},
}


class CursorPage(BaseModel):
    """A page of a cursor-only list: no offset, no total (stable, cheap)."""

    items: list[ItemPublic]
    limit: int
    next_cursor: str | None


@router.get(
    "/items",
    summary="List my items",
    responses=ERRORS,
    response_model=Envelope[CursorPage],
)
async def list_my_items(
    principal: Annotated[Principal, require(ITEMS_READ)],
    database: DatabaseDep,
    query: ItemListParams,
) -> FastJSONResponse:
    """The caller's items; follow `next_cursor` until it is null."""
    found = await items.list_items(
        database.reader,
        principal.user_id,
        query.filters(),
        limit=query.limit,
        cursor=query.cursor,
        with_total=False,
    )
    page = {
        "items": found.items,
        "limit": query.limit,
        "next_cursor": found.next_cursor,
    }
    # Rows straight to orjson, as in v1 (see `page_response` there).
    return FastJSONResponse(success(page))
