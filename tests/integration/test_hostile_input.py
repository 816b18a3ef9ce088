"""Values no column can hold are bad input (4xx in the envelope), never a 500.

SQLite stores almost anything; PostgreSQL refuses ids past 32 bits, NUL bytes
and dates outside its range inside the driver. Each case here was a 500 on
PostgreSQL (some on SQLite too) before the API checked it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import User
from tests.conftest import DEFAULT_PASSWORD, audit_rows, bearer, login

TOO_BIG = 2**31  # one past the largest INTEGER id


@pytest.fixture
async def admin_headers(client: AsyncClient, admin: User) -> dict[str, str]:
    return bearer((await login(client, "root"))["access_token"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/v1/items/{TOO_BIG}"),
        ("PATCH", f"/api/v1/items/{TOO_BIG}"),
        ("DELETE", f"/api/v1/items/{TOO_BIG}"),
        ("GET", f"/api/v1/items/{TOO_BIG}/attachments"),
        ("GET", f"/api/v1/users/{TOO_BIG}"),
        ("DELETE", f"/api/v1/users/{TOO_BIG}"),
        ("GET", f"/api/v1/users/{TOO_BIG}/items"),
        ("GET", f"/api/v1/admin/audit?actor_id={TOO_BIG}"),
        ("DELETE", "/api/v1/auth/sessions/%00abc"),
        ("GET", "/api/v1/items?created_after=2020-01-01T00:00:00"),
        ("GET", "/api/v2/items?created_before=2020-01-01T00:00:00"),
        ("GET", "/api/v1/admin/audit?since=2020-01-01T00:00:00"),
        ("GET", "/api/v1/items?created_after=0001-01-01T00:00:00%2B14:00"),
        ("GET", "/api/v1/admin/audit?until=9999-12-31T23:00:00-14:00"),
    ],
)
async def test_unstorable_values_are_422(
    client: AsyncClient, admin_headers: dict[str, str], method: str, path: str
) -> None:
    response = await client.request(
        method, path, headers={**admin_headers, "If-Match": '"1"'}, json={"title": "t"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


def _cursor(
    last_id: Any,
    value: Any = "2026-01-01T00:00:00+00:00",
    sort: str = "created_at",
) -> str:
    raw = orjson.dumps([sort, "desc", value, last_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("last_id", [2**63, TOO_BIG, 0, -1])
async def test_a_cursor_with_an_impossible_id_is_refused(
    client: AsyncClient, admin_headers: dict[str, str], last_id: int
) -> None:
    response = await client.get(
        "/api/v1/items", params={"cursor": _cursor(last_id)}, headers=admin_headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "query.cursor"


async def test_the_largest_id_is_still_just_not_found(
    client: AsyncClient, admin_headers: dict[str, str]
) -> None:
    response = await client.get(f"/api/v1/items/{TOO_BIG - 1}", headers=admin_headers)
    assert response.status_code == 404


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("sort", "value"),
    [
        ("title", "a\x00b"),  # no title can hold a NUL (PostgreSQL: bad byte sequence)
        ("created_at", "2026-01-01T00:00:00\x00+00:00"),
        ("created_at", "0001-01-01T00:00:00+14:00"),  # before year 1 in UTC
        ("updated_at", "9999-12-31T23:00:00-14:00"),  # after year 9999 in UTC
        ("created_at", "2026-01-01T00:00:00"),  # no zone
        ("created_at", "2026-01-01"),
    ],
)
async def test_a_cursor_with_an_unstorable_value_is_refused(
    client: AsyncClient,
    admin_headers: dict[str, str],
    version: str,
    sort: str,
    value: str,
) -> None:
    response = await client.get(
        f"/api/{version}/items",
        params={"cursor": _cursor(1, value, sort), "sort": sort, "order": "desc"},
        headers=admin_headers,
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"][0]["field"] == "query.cursor"


@pytest.mark.parametrize("sort", ["created_at", "title"])
async def test_cursors_the_service_made_still_page_on(
    client: AsyncClient, admin_headers: dict[str, str], sort: str
) -> None:
    # A zone other than UTC and a title with a tab are storable, so they stay valid.
    for title in ("b\tone", "a\ttwo", "c three"):
        created = await client.post(
            "/api/v1/items", json={"title": title}, headers=admin_headers
        )
        assert created.status_code == 201, created.text
    query = {"sort": sort, "order": "asc", "limit": 1}
    seen = []
    cursor = None
    for _ in range(4):
        page = await client.get(
            "/api/v2/items",
            params={**query, **({"cursor": cursor} if cursor else {})},
            headers=admin_headers,
        )
        assert page.status_code == 200, page.text
        seen += [item["title"] for item in page.json()["data"]["items"]]
        cursor = page.json()["data"]["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["a\ttwo", "b\tone", "c three"]
    shifted = _cursor(1, "2026-01-01T05:00:00+05:00")
    response = await client.get(
        "/api/v1/items", params={"cursor": shifted}, headers=admin_headers
    )
    assert response.status_code == 200, response.text


async def _stored_ips(
    app: Any, engine: AsyncEngine, peer: str, forwarded: str | None
) -> tuple[str | None, str | None]:
    """Log in and create an item from `peer`; the session's and audit's client IP."""
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    transport = ASGITransport(app=app, client=(peer, 40000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        tokens = await http.post(
            "/api/v1/auth/login",
            data={"username": "alice", "password": DEFAULT_PASSWORD},
            headers=headers,
        )
        assert tokens.status_code == 200, tokens.text
        token = tokens.json()["access_token"]
        created = await http.post(
            "/api/v1/items", json={"title": "t"}, headers={**headers, **bearer(token)}
        )
        assert created.status_code == 201, created.text
    async with engine.connect() as connection:
        session_ip = (
            await connection.execute(text("SELECT ip_address FROM auth_sessions"))
        ).scalar_one()
    (audit,) = await audit_rows(engine, action="item.create")
    return session_ip, audit["client_ip"]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # 127.0.0.1 is the trusted proxy by default: its header is believed...
        ("127.0.0.1", "203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.9", "203.0.113.9"),  # nearest hop
        ("127.0.0.1", "::ffff:203.0.113.9", "203.0.113.9"),  # one form per client
        ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        # ...when it holds an IP address; anything else is the peer's address.
        ("127.0.0.1", "not-an-ip", "127.0.0.1"),
        ("127.0.0.1", "1" * 46, "127.0.0.1"),  # longer than any address column
        ("127.0.0.1", "2001:db8::1%" + "x" * 40, "127.0.0.1"),  # a scope id
        ("127.0.0.1", "", "127.0.0.1"),
        # Another peer's header is never believed.
        ("192.0.2.5", "203.0.113.9", "192.0.2.5"),
        # A server in front that believed garbage itself: nothing is stored.
        ("not-an-ip", None, None),
        ("not-an-ip", "203.0.113.9", None),
    ],
)
async def test_only_a_validated_client_ip_is_stored(
    app: Any,
    engine: AsyncEngine,
    alice: User,
    peer: str,
    forwarded: str | None,
    expected: str | None,
) -> None:
    assert await _stored_ips(app, engine, peer, forwarded) == (expected, expected)


@pytest.mark.parametrize(
    "if_match",
    [
        b'"' + b"9" * 5000 + b'"',  # int() refuses past 4300 digits: was a 500
        b'"\xb2"',  # "²" (latin-1): isdigit() yet no int(), was a 500
        b'"1 "',
    ],
)
async def test_an_if_match_that_is_no_etag_of_ours_never_matches(
    client: AsyncClient, admin_headers: dict[str, str], if_match: bytes
) -> None:
    created = await client.post(
        "/api/v1/items", json={"title": "t"}, headers=admin_headers
    )
    assert created.headers["etag"] == '"1"'
    response = await client.patch(
        f"/api/v1/items/{created.json()['data']['id']}",
        json={"title": "renamed"},
        headers={**admin_headers, "If-Match": if_match},
    )
    assert response.status_code == 412, response.text
    assert response.json()["error"]["code"] == "PRECONDITION_FAILED"
