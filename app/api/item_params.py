"""Query parameters of item lists, shared by API versions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Query

from app.core.domain import ItemStatus
from app.schemas.item import ItemFilters, SortField, SortOrder
from app.schemas.user import QueryText


async def item_filters(
    status: ItemStatus | None = None,
    created_after: Annotated[
        datetime | None, Query(description="Created at or after (ISO 8601, with zone)")
    ] = None,
    created_before: Annotated[
        datetime | None, Query(description="Created before (ISO 8601, with zone)")
    ] = None,
    q: Annotated[
        QueryText | None,
        Query(min_length=1, max_length=100, description="Text in the title"),
    ] = None,
    sort: SortField = SortField.CREATED_AT,
    order: SortOrder = SortOrder.DESC,
) -> ItemFilters:
    """Filters and ordering from the query string (sort fields are whitelisted)."""
    return ItemFilters(
        status=status,
        created_after=created_after,
        created_before=created_before,
        search=q,
        sort=sort,
        order=order,
    )


ItemFiltersDep = Annotated[ItemFilters, Depends(item_filters)]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
CursorParam = Annotated[
    str | None,
    Query(max_length=512, description="`next_cursor` of the previous page"),
]
