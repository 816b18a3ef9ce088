"""Probes, offline docs and the OpenAPI document."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from httpx import ASGITransport, AsyncClient

from app.main import create_app
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.helpers import REDIS_SERVER, redis_server


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_health_reports_service_and_version(client: AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "service": "fastapi-backend",
        "version": "0.1.0",
    }


async def test_ready_when_database_answers(client: AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "components": {"database": "ok", "email": "closed"},
    }


@pytest.mark.parametrize("path", ["/health", "/ready", "/api/v1/openapi.json", "/docs"])
async def test_head_answers_like_get_without_a_body(
    client: AsyncClient, path: str
) -> None:
    get = await client.get(path)
    head = await client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["x-request-id"]


async def test_head_of_an_authenticated_route_is_authenticated(
    client: AsyncClient,
) -> None:
    response = await client.head("/api/v1/users/me")
    assert response.status_code == 401
    assert response.content == b""


async def probe(**settings: object) -> tuple[int, dict[str, object]]:
    app = create_app(make_settings(READY_TIMEOUT_SECONDS=1.0, **settings))
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/ready")
    await app.state.database.dispose()
    return response.status_code, response.json()


async def test_not_ready_when_database_is_down() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{unused_port()}/none"
    status, body = await probe(DATABASE_URL=url)
    assert status == 503
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "SERVICE_UNAVAILABLE"
    assert error["details"][0]["field"] == "database"


async def test_ready_but_degraded_when_redis_is_down(database_url: str) -> None:
    # The API serves without Redis, so the instance must stay in rotation.
    status, body = await probe(
        DATABASE_URL=database_url, REDIS_URL=f"redis://127.0.0.1:{unused_port()}/0"
    )
    assert status == 200
    assert body["status"] == "degraded"
    components = body["components"]
    assert isinstance(components, dict)
    assert components["database"] == "ok"
    assert components["redis"] == "down: ConnectionError"
    assert components["email"] == "closed"


async def test_not_ready_when_database_is_down_even_with_redis_up() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{unused_port()}/none"
    status, body = await probe(DATABASE_URL=url, REDIS_URL=TEST_REDIS_URL or "")
    assert status == 503
    error = body["error"]
    assert isinstance(error, dict)
    assert error["details"][0]["field"] == "database"


@pytest.mark.skipif(TEST_REDIS_URL is None, reason="TEST_REDIS_URL not set")
async def test_ready_with_redis(database_url: str) -> None:
    status, body = await probe(DATABASE_URL=database_url, REDIS_URL=TEST_REDIS_URL)
    assert status == 200
    assert body["status"] == "ready"
    components = body["components"]
    assert isinstance(components, dict)
    assert (components["database"], components["email"]) == ("ok", "closed")
    assert str(components["redis"]).startswith("ok")  # with notes on its settings


needs_redis_server = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server not installed"
)


@needs_redis_server
class TestRedisThatMayLoseEvents:
    """/ready says when the connected Redis can lose the event stream."""

    @pytest.mark.parametrize(
        ("options", "reported"),
        [
            (
                ("--appendonly", "no", "--maxmemory-policy", "allkeys-lru"),
                "ok (warning: appendonly no, maxmemory-policy allkeys-lru)",
            ),
            (
                ("--appendonly", "yes", "--maxmemory-policy", "allkeys-random"),
                "ok (warning: maxmemory-policy allkeys-random)",
            ),
            (("--appendonly", "no"), "ok (warning: appendonly no)"),
            (("--appendonly", "yes", "--maxmemory-policy", "noeviction"), "ok"),
            (("--appendonly", "yes", "--maxmemory-policy", "volatile-lru"), "ok"),
            # Managed Redis often refuses CONFIG: not known, and not a failure.
            (
                ("--rename-command", "CONFIG", ""),
                "ok (appendonly, maxmemory-policy unknown)",
            ),
        ],
    )
    async def test_ready_reports_redis_settings(
        self,
        database_url: str,
        tmp_path: Path,
        options: tuple[str, ...],
        reported: str,
    ) -> None:
        with redis_server(tmp_path, *options) as redis:
            status, body = await probe(DATABASE_URL=database_url, REDIS_URL=redis.url)

        assert (status, body["status"]) == (200, "ready")  # it serves: in rotation
        components = body["components"]
        assert isinstance(components, dict)
        assert components["redis"] == reported


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_pages_load_nothing_from_other_hosts(
    client: AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    html = response.text
    assert "/api/v1/openapi.json" in html
    referenced = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
    assert referenced, "the page must load its bundle"
    assert all(ref.startswith("/") for ref in referenced), referenced
    assert "cdn" not in html.lower()
    assert "fonts.googleapis" not in html
    for ref in referenced:
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000


# What a browser requests by itself while running a page's scripts and styles:
# an image or script source, a CSS url() or @import, a fetch. (An href is only
# followed when clicked.)
RUN_TIME_REQUEST = re.compile(
    r"""(?:\bsrc\s*[:=]\s*|url\(\s*|@import\s+|fetch\(\s*)["'`]?(https?://[^"'`)\s]+)"""
)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_docs_scripts_request_nothing_from_other_hosts(
    client: AsyncClient, path: str
) -> None:
    html = (await client.get(path)).text
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html)
    texts = [html]
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        if not asset.endswith(".png"):
            texts.append(response.text)
    external = [url for text in texts for url in RUN_TIME_REQUEST.findall(text)]
    assert external == []
    assert not any("cdn.redoc.ly" in text for text in texts)
    if path == "/docs":
        # Swagger UI's default validator badge is an image from swagger.io.
        assert '"validatorUrl": null' in html


async def test_openapi_documents_envelopes_and_errors(client: AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    signup = document["paths"]["/api/v1/auth/signup"]["post"]
    created = signup["responses"]["201"]["content"]["application/json"]["schema"]
    assert created["$ref"].endswith("Envelope_UserPublic_")
    for status in ("409", "422", "500"):
        schema = signup["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorEnvelope")
    envelope = document["components"]["schemas"]["Envelope_UserPublic_"]
    assert envelope["properties"]["data"]["$ref"].endswith("/UserPublic")
    public = document["components"]["schemas"]["UserPublic"]["properties"]
    assert "hashed_password" not in public


DOCS_PATHS = [
    "/docs",
    "/redoc",
    "/docs/oauth2-redirect",
    "/docs/static/swagger-ui-bundle.js",
    "/api/v1/openapi.json",
]


async def _docs_statuses(database_url: str, **settings: object) -> list[int]:
    app = create_app(make_settings(DATABASE_URL=database_url, **settings))
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://t") as http:
        statuses = [(await http.get(path)).status_code for path in DOCS_PATHS]
        statuses.append((await http.get("/health")).status_code)
    await app.state.database.dispose()
    return statuses


async def test_docs_can_be_switched_off(database_url: str) -> None:
    assert await _docs_statuses(database_url, DOCS_ENABLED=False) == [
        *[404] * len(DOCS_PATHS),
        200,
    ]
    assert await _docs_statuses(database_url) == [200] * (len(DOCS_PATHS) + 1)


async def test_production_serves_docs_only_when_asked(database_url: str) -> None:
    production = {"ENVIRONMENT": "production", "METRICS_TOKEN": "m" * 32}
    assert await _docs_statuses(database_url, **production) == [
        *[404] * len(DOCS_PATHS),
        200,
    ]
    assert await _docs_statuses(database_url, DOCS_ENABLED=True, **production) == [
        200
    ] * (len(DOCS_PATHS) + 1)
