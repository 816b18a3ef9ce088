"""Model helpers: UTC datetimes and display names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import String
from sqlalchemy.dialects import sqlite

from app.models import Item, User
from app.models.base import UTCDateTime
from app.schemas.item import ItemCreate, ItemUpdate
from app.schemas.user import (
    ProfileUpdate,
    SuperuserCreate,
    UserCreateByAdmin,
    UserSignup,
    UserUpdate,
)

dialect = sqlite.dialect()


def test_utc_datetime_refuses_naive_values() -> None:
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2026, 1, 1), dialect)


def test_utc_datetime_normalises_to_utc() -> None:
    plus_two = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    stored = UTCDateTime().process_bind_param(plus_two, dialect)
    assert stored == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert stored.tzinfo == UTC


def test_utc_datetime_reads_naive_as_utc() -> None:
    read = UTCDateTime().process_result_value(datetime(2026, 1, 1, 10), dialect)
    assert read == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert UTCDateTime().process_result_value(None, dialect) is None
    assert UTCDateTime().process_bind_param(None, dialect) is None


@pytest.mark.parametrize(
    ("desired", "first", "last", "expected"),
    [
        ("Ada", "Augusta", "King", "Ada"),
        (None, "Augusta", "King", "Augusta King"),
        (None, "", "", "a@example.com"),
    ],
)
def test_display_name(
    desired: str | None, first: str, last: str, expected: str
) -> None:
    user = User(
        email="a@example.com", desired_name=desired, first_name=first, last_name=last
    )
    assert user.display_name == expected


def _max_length(field_schema: dict[str, Any]) -> int | None:
    """`maxLength` of a string field's JSON schema, also inside `anyOf` (optional)."""
    for option in [field_schema, *field_schema.get("anyOf", [])]:
        if option.get("type") == "string" and "maxLength" in option:
            return int(option["maxLength"])
    return None


@pytest.mark.parametrize(
    ("schema", "model"),
    [
        (UserSignup, User),
        (SuperuserCreate, User),
        (ProfileUpdate, User),
        (UserUpdate, User),
        (UserCreateByAdmin, User),
        (ItemCreate, Item),
        (ItemUpdate, Item),
    ],
)
def test_every_accepted_string_fits_its_column(schema: Any, model: Any) -> None:
    # SQLite stores any length, PostgreSQL refuses: a value the schema accepts
    # but the column cannot hold was a 500 on PostgreSQL only.
    columns = model.__table__.columns
    properties = schema.model_json_schema()["properties"]
    checked = 0
    for name, field_schema in properties.items():
        if name not in columns or not isinstance(columns[name].type, String):
            continue
        length = columns[name].type.length
        options = [field_schema, *field_schema.get("anyOf", [])]
        if any("$ref" in option or "enum" in option for option in options):
            continue  # enums: their values are short by construction
        accepted = _max_length(field_schema)
        assert accepted is not None, f"{schema.__name__}.{name} has no max length"
        assert accepted <= length, f"{schema.__name__}.{name}: {accepted} > {length}"
        checked += 1
    assert checked
