"""Model helpers: UTC datetimes and display names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from app.models import User
from app.models.base import UTCDateTime

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
