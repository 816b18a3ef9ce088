"""The measured endpoints, and the fixture that prepares each run's requests."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from bench.ceiling import FLOOR_PASSWORD
from bench.client import Client
from bench.spec import LoadSpec

API = "/api/v1"
PAGE_SIZE = 100
TOKEN_MAX_AGE_SECONDS = 300  # well inside the default 15-minute access-token lifetime


@dataclass(frozen=True)
class RunShape:
    """How hard and how long one run pushes."""

    connections: int
    duration: float
    timeout: float


class Fixture:
    """Everything the requests of a run need: tokens, the deep cursor, the pools."""

    def __init__(
        self,
        service_url: str,
        ceiling_url: str,
        seeded: dict[str, Any],
        password: str,
    ) -> None:
        """Bind to the running servers and the seed's outcome."""
        self.service_url = service_url
        self.ceiling_url = ceiling_url
        self.seeded = seeded
        self.password = password
        self.client = Client(service_url)
        self.refresh_tokens: deque[str] = deque(seeded["refresh_tokens"])
        self._tokens: dict[str, tuple[float, str]] = {}
        self._deep_cursor: tuple[int, str] | None = None

    def access_token(self, username: str) -> str:
        """A fresh enough access token of `username` (logs in when needed)."""
        cached = self._tokens.get(username)
        if cached is not None and time.monotonic() - cached[0] < TOKEN_MAX_AGE_SECONDS:
            return cached[1]
        token = str(self.client.login(username, self.password)["access_token"])
        self._tokens[username] = (time.monotonic(), token)
        return token

    def bearer(self, username: str) -> dict[str, str]:
        """The Authorization header of `username`."""
        return {"Authorization": f"Bearer {self.access_token(username)}"}

    @property
    def bench_user(self) -> str:
        """The reading user (owns exactly `bench_items` items)."""
        return str(self.seeded["bench_username"])

    @property
    def writer(self) -> str:
        """The writing user (creates and patches)."""
        return str(self.seeded["writer_username"])

    def deep_cursor(self) -> tuple[int, str]:
        """(page number, cursor) of a page deep in the bench user's list.

        Page 9 of 10 with 1,000 items; with a smaller seed, the last full page.
        """
        if self._deep_cursor is None:
            bench_items = int(self.seeded["plan"]["bench_items"])
            page = max(2, min(9, bench_items // PAGE_SIZE))
            cursor = ""
            for _ in range(page - 1):
                cursor = self._next_cursor(cursor)
            self._deep_cursor = (page, cursor)
        return self._deep_cursor

    def _next_cursor(self, cursor: str) -> str:
        query = {"limit": PAGE_SIZE, **({"cursor": cursor} if cursor else {})}
        answer = self.client.expect(
            "GET",
            f"{API}/items?{urlencode(query)}",
            headers=self.bearer(self.bench_user),
        )
        data = orjson.loads(answer.body)["data"]
        if not data.get("next_cursor"):
            raise RuntimeError("the items list ended before the deep page")
        return str(data["next_cursor"])

    def patch_pool(self, size: int) -> list[list[Any]]:
        """[[id, current ETag], ...] of `size` of the writer's items."""
        headers = self.bearer(self.writer)
        pool = []
        for item_id in self.seeded["writer_item_ids"][:size]:
            answer = self.client.expect(
                "GET", f"{API}/items/{item_id}", headers=headers
            )
            pool.append([item_id, answer.headers["etag"]])
        return pool

    def take_refresh_tokens(self, count: int) -> list[str]:
        """`count` never-used refresh tokens from the seeded reservoir."""
        if len(self.refresh_tokens) < count:
            raise RuntimeError("the seeded refresh tokens ran out")
        return [self.refresh_tokens.popleft() for _ in range(count)]


Builder = Callable[[Fixture, RunShape], LoadSpec]


@dataclass(frozen=True)
class Endpoint:
    """A measured endpoint: its key, its table label and how to build a run."""

    key: str
    label: str
    build: Builder
    route: tuple[str, str] | None = None  # (method, OpenAPI path) it needs


def _spec(
    base_url: str, shape: RunShape, method: str, path: str, **fields: Any
) -> LoadSpec:
    return LoadSpec(
        base_url=base_url,
        method=method,
        path=path,
        connections=shape.connections,
        duration=shape.duration,
        timeout=shape.timeout,
        **fields,
    )


def _ceiling(fixture: Fixture, shape: RunShape) -> LoadSpec:
    headers = fixture.bearer(fixture.bench_user)
    return _spec(fixture.ceiling_url, shape, "GET", "/ceiling", headers=headers)


def _form_logins(
    fixture: Fixture, shape: RunShape, base_url: str, path: str, password: str
) -> LoadSpec:
    """Form logins rotating over the seeded users (all share one password)."""
    bodies = [
        urlencode({"username": name, "password": password})
        for name in fixture.seeded["usernames"]
    ]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return _spec(
        base_url, shape, "POST", path, kind="rotate", headers=headers, bodies=bodies
    )


def _login(fixture: Fixture, shape: RunShape) -> LoadSpec:
    path = f"{API}/auth/login"
    return _form_logins(fixture, shape, fixture.service_url, path, fixture.password)


def _login_floor(fixture: Fixture, shape: RunShape) -> LoadSpec:
    url = fixture.ceiling_url
    return _form_logins(fixture, shape, url, "/login-floor", FLOOR_PASSWORD)


def _me(fixture: Fixture, shape: RunShape) -> LoadSpec:
    headers = fixture.bearer(fixture.bench_user)
    return _spec(fixture.service_url, shape, "GET", f"{API}/users/me", headers=headers)


def _items_first_page(fixture: Fixture, shape: RunShape) -> LoadSpec:
    headers = fixture.bearer(fixture.bench_user)
    path = f"{API}/items?limit={PAGE_SIZE}"
    return _spec(fixture.service_url, shape, "GET", path, headers=headers)


def _items_deep_page(fixture: Fixture, shape: RunShape) -> LoadSpec:
    _, cursor = fixture.deep_cursor()
    headers = fixture.bearer(fixture.bench_user)
    path = f"{API}/items?limit={PAGE_SIZE}&cursor={quote(cursor, safe='')}"
    return _spec(fixture.service_url, shape, "GET", path, headers=headers)


def _items_create(fixture: Fixture, shape: RunShape) -> LoadSpec:
    headers = {**fixture.bearer(fixture.writer), "Content-Type": "application/json"}
    body = orjson.dumps(
        {"title": "Benchmark item", "description": "Created by the load benchmark."}
    ).decode()
    return _spec(
        fixture.service_url, shape, "POST", f"{API}/items", headers=headers, body=body
    )


def _items_patch(fixture: Fixture, shape: RunShape) -> LoadSpec:
    headers = {**fixture.bearer(fixture.writer), "Content-Type": "application/json"}
    return _spec(
        fixture.service_url,
        shape,
        "PATCH",
        f"{API}/items/{{id}}",
        kind="patch_pool",
        headers=headers,
        body='{"description": "Patched by the load benchmark, change {n}."}',
        items=fixture.patch_pool(2 * shape.connections),
    )


def _refresh(fixture: Fixture, shape: RunShape) -> LoadSpec:
    return _spec(
        fixture.service_url,
        shape,
        "POST",
        f"{API}/auth/refresh",
        kind="refresh_pool",
        headers={"Content-Type": "application/json"},
        body='{"refresh_token": "{token}"}',
        tokens=fixture.take_refresh_tokens(2 * shape.connections),
    )


CEILING = Endpoint("ceiling", "`GET /ceiling` (bare FastAPI, JWT decode)", _ceiling)
# Measured beside login only: the least a login can cost (see bench/ceiling.py).
LOGIN_FLOOR = Endpoint(
    "login-floor",
    "`POST /login-floor` (bare FastAPI, argon2id verify + JWT)",
    _login_floor,
)
ENDPOINTS = [
    Endpoint("login", "`POST /auth/login`", _login),
    Endpoint("me", "`GET /users/me`", _me),
    Endpoint(
        "items-list",
        "`GET /items?limit=100`",
        _items_first_page,
        ("get", f"{API}/items"),
    ),
    Endpoint(
        "items-deep",
        "`GET /items?limit=100&cursor=…` (deep page)",
        _items_deep_page,
        ("get", f"{API}/items"),
    ),
    Endpoint("items-create", "`POST /items`", _items_create, ("post", f"{API}/items")),
    Endpoint(
        "items-patch",
        "`PATCH /items/{id}` (If-Match)",
        _items_patch,
        ("patch", f"{API}/items/{{}}"),
    ),
    Endpoint("refresh", "`POST /auth/refresh`", _refresh),
]
ENDPOINT_KEYS = [endpoint.key for endpoint in ENDPOINTS]


def missing_routes(openapi: dict[str, Any], endpoints: list[Endpoint]) -> list[str]:
    """Keys of the endpoints whose route the service does not have (yet)."""
    paths: dict[str, Any] = openapi.get("paths", {})
    normalised = {_normalise(path): ops for path, ops in paths.items()}
    return [
        endpoint.key
        for endpoint in endpoints
        if endpoint.route is not None
        and endpoint.route[0] not in normalised.get(endpoint.route[1], {})
    ]


def _normalise(path: str) -> str:
    """`/items/{item_id}` -> `/items/{}`: parameter names do not matter."""
    parts = [("{}" if part.startswith("{") else part) for part in path.split("/")]
    return "/".join(parts)
