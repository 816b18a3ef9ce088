"""Opaque keyset cursors: the sort key and id of the last row of a page."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app.core.domain import MAX_ID
from app.core.exceptions import AppError


class InvalidCursorError(AppError):
    """The cursor is malformed or was made for another sort order."""

    status_code = 422
    code = "VALIDATION_ERROR"
    message = "Invalid input"

    def __init__(self, reason: str) -> None:
        super().__init__(details=[{"field": "query.cursor", "message": reason}])


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last row: its sort value and id, for one sort order."""

    sort: str
    order: str
    value: str | datetime
    last_id: int

    def encode(self) -> str:
        """Serialise to a URL-safe opaque string."""
        value = (
            self.value.isoformat() if isinstance(self.value, datetime) else self.value
        )
        raw = orjson.dumps([self.sort, self.order, value, self.last_id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, *, sort: str, order: str, is_time: bool) -> Cursor:
        """Parse a cursor made for the same `sort` and `order`.

        Raises:
            InvalidCursorError: Malformed, or made for another ordering.
        """
        try:
            padded = token + "=" * (-len(token) % 4)
            data: Any = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
            made_sort, made_order, value, last_id = data
            if not isinstance(value, str) or not isinstance(last_id, int):
                raise TypeError
            if not 1 <= last_id <= MAX_ID:
                raise ValueError
            parsed = _position(value, is_time=is_time)
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
            raise InvalidCursorError("malformed cursor") from exc
        if (made_sort, made_order) != (sort, order):
            raise InvalidCursorError("the cursor belongs to another sort order")
        return cls(sort, order, parsed, last_id)


def _position(value: str, *, is_time: bool) -> str | datetime:
    """The sort value, checked as the filters check theirs.

    A cursor is client input like any filter: a NUL (no column holds one;
    PostgreSQL refuses the bytes), a time without a zone, or one that UTC cannot
    express (`0001-01-01T00:00+14:00`) would fail in the driver, as a 500.
    """
    if "\x00" in value:
        raise ValueError("NUL character")
    if not is_time:
        return value
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("time without a zone")
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("time out of range") from exc
