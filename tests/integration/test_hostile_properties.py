"""Property-based: no header, cookie or query value the service parses is a 5xx.

Each property sends values hypothesis draws (raw text, edge cases that broke
before, and well-formed structures with hostile contents: cursors, signed
tokens) and asserts that the answer is never a 5xx and that every 4xx is the
JSON error envelope. Examples are bounded so a property takes seconds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from httpx import ASGITransport, AsyncClient, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.config import Settings
from app.models import User
from tests.conftest import bearer, login
from tests.helpers import claims_of

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # nothing written to the work tree; each run draws anew
    # The app, client and login are shared by the examples on purpose: what
    # they leave behind (items, sessions) only widens what later ones meet.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# What an HTTP/1.1 server passes on in a header value: tab, visible ASCII and
# obs-text (uvicorn refuses other control characters before the app).
header_text = st.text(
    st.one_of(
        st.just("\t"),
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.characters(min_codepoint=0x80, max_codepoint=0xFF),
    ),
    max_size=60,
)
# Values that broke, or nearly did, each a parser's edge.
edge_text = st.sampled_from(
    [
        "",
        " ",
        "*",
        "0",
        "-1",
        '"٦"',
        'W/"1"',
        '"1", "2"',
        "not-an-ip",
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "2001:db8::1%" + "x" * 40,
        "[::1]:80",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "٦",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "2026-01-01T00:00:00",
        "1e309",
        "nan",
        str(2**31),
        str(2**63),
        "a\x00b",
    ]
)
# Long digit runs (past an address column, past int()'s 4300-digit limit),
# built lazily so a failing example's report stays short.
long_digits = st.sampled_from([46, 5000]).map("9".__mul__)
edge_text = st.one_of(edge_text, long_digits, long_digits.map('"{}"'.format))
value = st.one_of(header_text, edge_text)
# Query strings are UTF-8 percent-encoded: any character but a lone surrogate.
query_text = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40), edge_text
)
number_text = st.integers(min_value=-(2**70), max_value=2**70).map(str)
offsets = [timedelta(hours=14), timedelta(hours=-14), timedelta(0), timedelta(hours=5)]
moments = st.datetimes(
    timezones=st.one_of(
        st.none(), st.sampled_from([timezone(delta) for delta in offsets])
    )
).map(datetime.isoformat)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
        moments,
        edge_text,
    ),
    lambda children: st.lists(children, max_size=3),
    max_leaves=6,
)


def _encoded(data: Any) -> str:
    # The standard library writes any int (orjson stops at 64 bits).
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


cursors = st.one_of(
    query_text,
    st.tuples(
        st.one_of(st.sampled_from(["created_at", "updated_at", "title"]), json_values),
        st.one_of(st.sampled_from(["asc", "desc"]), json_values),
        json_values,
        st.one_of(st.integers(min_value=-(2**64), max_value=2**64), json_values),
    ).map(lambda parts: _encoded(list(parts))),
    st.lists(json_values, max_size=6).map(_encoded),
)
item_query = st.fixed_dictionaries(
    {},
    optional={
        "cursor": cursors,
        "limit": st.one_of(number_text, query_text),
        "offset": st.one_of(number_text, query_text),
        "status": st.one_of(st.sampled_from(["draft", "active"]), query_text),
        "created_after": st.one_of(moments, query_text),
        "created_before": st.one_of(moments, query_text),
        "q": query_text,
        "sort": st.one_of(st.sampled_from(["created_at", "title"]), query_text),
        "order": st.one_of(st.sampled_from(["asc", "desc"]), query_text),
    },
)
common_headers = st.fixed_dictionaries(
    {},
    optional={
        "X-Forwarded-For": value,
        "X-Request-ID": value,
        "If-Match": value,
        "If-None-Match": value,
        "Idempotency-Key": value,
    },
)


def _raw(headers: dict[str, str]) -> dict[str, bytes]:
    # Raw bytes, as a server hands them over (httpx would encode as ASCII).
    return {name: text.encode() for name, text in headers.items()}


def assert_handled(response: Response) -> None:
    """Never a 5xx; a 4xx is the error envelope with its four fields."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert body["status"] == "error", body
        assert set(body["error"]) == {"code", "message", "details", "request_id"}


@pytest.fixture
async def proxied(app: Any, client: AsyncClient) -> AsyncIterator[AsyncClient]:
    """A client whose peer is the default trusted proxy: X-Forwarded-For counts."""
    transport = ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def root_token(client: AsyncClient, admin: User) -> str:
    token: str = (await login(client, "root"))["access_token"]
    created = await client.post(
        "/api/v1/items", json={"title": "seed"}, headers=bearer(token)
    )
    assert created.status_code == 201
    return token


@PROPERTY
@given(
    version=st.sampled_from(["v1", "v2"]),
    params=item_query,
    headers=common_headers,
)
async def test_item_lists_answer_any_query(
    proxied: AsyncClient,
    root_token: str,
    version: str,
    params: dict[str, str],
    headers: dict[str, str],
) -> None:
    response = await proxied.get(
        f"/api/{version}/items",
        params=params,
        headers={**_raw(headers), **bearer(root_token)},
    )
    assert_handled(response)


@PROPERTY
@given(
    method=st.sampled_from(["GET", "PATCH", "DELETE"]),
    item_id=st.one_of(st.just("1"), number_text, query_text),
    headers=common_headers,
)
async def test_item_writes_answer_any_precondition(
    proxied: AsyncClient,
    root_token: str,
    method: str,
    item_id: str,
    headers: dict[str, str],
) -> None:
    response = await proxied.request(
        method,
        "/api/v1/items/" + quote(item_id, safe=""),
        json={"title": "renamed"} if method == "PATCH" else None,
        headers={**_raw(headers), **bearer(root_token)},
    )
    assert_handled(response)


@PROPERTY
@given(headers=common_headers)
async def test_item_creation_answers_any_header(
    proxied: AsyncClient, root_token: str, headers: dict[str, str]
) -> None:
    response = await proxied.post(
        "/api/v1/items",
        json={"title": "made"},
        headers={**_raw(headers), **bearer(root_token)},
    )
    assert_handled(response)


claim_names = st.sampled_from(
    ["sub", "scope", "ver", "sid", "exp", "nbf", "iat", "jti", "type", "role"]
)
claim_names |= st.sampled_from(["email", "first_name", "desired_name", "aud", "iss"])


@PROPERTY
@given(
    changes=st.dictionaries(claim_names, json_values, max_size=4),
    raw=st.one_of(st.none(), value, value.map("Bearer {}".format)),
    path=st.sampled_from(["/api/v1/users/me", "/api/v1/items"]),
)
async def test_any_authorization_is_at_most_401(
    proxied: AsyncClient,
    root_token: str,
    settings: Settings,
    changes: dict[str, Any],
    raw: str | None,
    path: str,
) -> None:
    if raw is None:
        # A token the service's own key signed, with hostile claims (signed as
        # JWS bytes: jwt.encode itself would refuse some of them).
        claims = {**claims_of(root_token, settings), **changes}
        token = jwt.api_jws.encode(
            json.dumps(claims).encode(),
            settings.SECRET_KEY.get_secret_value(),
            algorithm="HS256",
            headers={"typ": "at+jwt"},
        )
        raw = f"Bearer {token}"
    authorization = _raw({"Authorization": raw})
    if path == "/api/v1/items":
        response = await proxied.post(path, json={"title": "t"}, headers=authorization)
    else:
        response = await proxied.get(path, headers=authorization)
    assert_handled(response)


@PROPERTY
@given(
    refresh_cookie=st.one_of(st.none(), value),
    csrf_cookie=st.one_of(st.none(), value),
    csrf_header=st.one_of(st.none(), value),
    path=st.sampled_from(["/api/v1/auth/refresh", "/api/v1/auth/logout"]),
)
async def test_any_refresh_cookie_or_csrf_value_is_at_most_4xx(
    proxied: AsyncClient,
    root_token: str,
    refresh_cookie: str | None,
    csrf_cookie: str | None,
    csrf_header: str | None,
    path: str,
) -> None:
    # Cookies arrive as one header; `;` and `=` in a value are its own business.
    jar = {"refresh_token": refresh_cookie, "csrf_token": csrf_cookie}
    cookie = "; ".join(f"{name}={text}" for name, text in jar.items() if text)
    headers = {"Cookie": cookie} if cookie else {}
    if csrf_header is not None:
        headers["X-CSRF-Token"] = csrf_header
    if path.endswith("logout"):
        headers["Authorization"] = f"Bearer {root_token}"
    proxied.cookies.clear()
    response = await proxied.post(path, headers=_raw(headers))
    assert_handled(response)


audit_query = st.fixed_dictionaries(
    {},
    optional={
        "actor_id": st.one_of(number_text, query_text),
        "entity_type": query_text,
        "entity_id": query_text,
        "action": query_text,
        "since": st.one_of(moments, query_text),
        "until": st.one_of(moments, query_text),
        "limit": st.one_of(number_text, query_text),
        "offset": st.one_of(number_text, query_text),
    },
)
user_query = st.fixed_dictionaries(
    {},
    optional={
        "q": query_text,
        "role": st.one_of(st.sampled_from(["admin", "user"]), query_text),
        "is_active": st.one_of(st.sampled_from(["true", "0"]), query_text),
        "limit": st.one_of(number_text, query_text),
        "offset": st.one_of(number_text, query_text),
    },
)


@PROPERTY
@given(
    target=st.one_of(
        st.tuples(st.just("/api/v1/admin/audit"), audit_query),
        st.tuples(st.just("/api/v1/users"), user_query),
    )
)
async def test_admin_searches_answer_any_query(
    proxied: AsyncClient, root_token: str, target: tuple[str, dict[str, str]]
) -> None:
    path, params = target
    response = await proxied.get(path, params=params, headers=bearer(root_token))
    assert_handled(response)
