"""Request and response schemas of items and their attachments."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.domain import ItemStatus
from app.schemas.user import Omittable, StrictInput

Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
]
Description = Annotated[str, StringConstraints(max_length=500)]


class ItemCreate(StrictInput):
    """A new item; the caller becomes its owner."""

    title: Title
    description: Description | None = None
    status: ItemStatus = ItemStatus.DRAFT


class ItemUpdate(StrictInput):
    """Fields to change; omitted fields stay as they are (`description` may be null)."""

    title: Omittable[Title] = None
    description: Description | None = None
    status: Omittable[ItemStatus] = None


class ItemBulkCreate(StrictInput):
    """Up to 100 items created together: all of them or none."""

    items: list[ItemCreate] = Field(min_length=1, max_length=100)


class ItemPublic(BaseModel):
    """An item as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    description: str | None
    status: ItemStatus
    owner_id: int
    created_by_id: int | None
    created_by_name: str
    updated_by_id: int | None
    updated_by_name: str
    created_at: datetime
    updated_at: datetime
    version: int


class SortField(StrEnum):
    """Columns a list may be sorted by (a whitelist)."""

    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    TITLE = "title"


class SortOrder(StrEnum):
    """Sort direction."""

    ASC = "asc"
    DESC = "desc"


class ItemFilters(BaseModel):
    """Filters and ordering of an item list."""

    status: ItemStatus | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    search: str | None = None
    sort: SortField = SortField.CREATED_AT
    order: SortOrder = SortOrder.DESC


class AttachmentPublic(BaseModel):
    """Metadata of an attached file."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    item_id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime
