"""Domain vocabularies shared by models (columns) and schemas (API)."""

from __future__ import annotations

from enum import StrEnum


class ItemStatus(StrEnum):
    """Lifecycle of an item."""

    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"
