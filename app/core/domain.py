"""Domain vocabularies shared by models (columns) and schemas (API)."""

from __future__ import annotations

from enum import StrEnum

MAX_ID = 2**31 - 1
"""The largest id a table holds (INTEGER on PostgreSQL, 32-bit).

Ids from outside (paths, filters, cursors) are checked against it, so a larger
number is a 422 instead of an overflow inside the driver (a 500).
"""


class ItemStatus(StrEnum):
    """Lifecycle of an item."""

    DRAFT = "draft"
    ACTIVE = "active"
    ARCHIVED = "archived"


def display_name(desired: str | None, first: str, last: str, email: str) -> str:
    """The name to show for a person: desired name, else first + last, else email.

    Seed 002's rule, used for `created_by_name` / `updated_by_name` and emails.
    """
    full = f"{first} {last}".strip()
    return desired or full or email
