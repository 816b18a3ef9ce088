"""Content sniffing, file-name sanitising, conditional headers, cursors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.conditional import etag, parse_if_match
from app.core.files import safe_filename, sniff_content_type
from app.core.pagination import Cursor, InvalidCursorError


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"\xff\xd8\xff\xe0JFIF", "image/jpeg"),
        (b"GIF89a....", "image/gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.4", "application/pdf"),
        ("héllo wörld".encode(), "text/plain"),
        ("é".encode() * 10 + "é".encode()[:1], "text/plain"),  # cut mid-character
        (b"MZ\x90\x00", None),
        (b"text with \x00 nul", None),
        (b"\xff\xfe\xfd invalid utf-8 \xc3\x28 here", None),
        (b"", None),
    ],
)
def test_sniff_content_type(head: bytes, expected: str | None) -> None:
    assert sniff_content_type(head) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a\r\nb\x00c.txt", "a_b_c.txt"),
        ("../../../etc/shadow", "shadow"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        (None, "file"),
        ("", "file"),
        ("x" * 300 + ".txt", "x" * 200),
    ],
)
def test_safe_filename(name: str | None, expected: str) -> None:
    assert safe_filename(name) == expected


def test_if_match_parsing() -> None:
    assert parse_if_match(None) is None
    assert parse_if_match("*").matches(99)  # type: ignore[union-attr]
    tags = parse_if_match('"1", W/"2", "x", "3"')
    assert tags is not None
    assert (tags.matches(1), tags.matches(2), tags.matches(3)) == (True, False, True)
    assert etag(4) == '"4"'


def test_cursor_round_trip_and_mismatch() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    token = Cursor("created_at", "desc", moment, 42).encode()
    decoded = Cursor.decode(token, sort="created_at", order="desc", is_time=True)
    assert (decoded.value, decoded.last_id) == (moment, 42)
    with pytest.raises(InvalidCursorError):
        Cursor.decode(token, sort="created_at", order="asc", is_time=True)
    naive = Cursor("created_at", "desc", "2026-01-01T00:00:00", 1).encode()
    with pytest.raises(InvalidCursorError):
        Cursor.decode(naive, sort="created_at", order="desc", is_time=True)
    with pytest.raises(InvalidCursorError):
        Cursor.decode("!!!", sort="title", order="asc", is_time=False)
