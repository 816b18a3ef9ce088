"""Every non-2xx answer is the error envelope, with the right status and code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from httpx import ASGITransport, AsyncClient

from app.core.config import Settings
from app.main import create_app
from tests.conftest import make_settings
from tests.helpers import capture_logs

SIGNUP = "/api/v1/auth/signup"


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "error"
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


async def test_unknown_route_is_404(client: AsyncClient) -> None:
    assert_error(await client.get("/api/v1/nope"), 404, "NOT_FOUND")


async def test_wrong_method_is_405(client: AsyncClient) -> None:
    response = await client.get(SIGNUP)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["allow"]


async def test_malformed_json_is_400(client: AsyncClient) -> None:
    response = await client.post(
        SIGNUP, content=b'{"email": ', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "MALFORMED_JSON")


async def test_body_over_limit_is_413(client: AsyncClient, settings: Settings) -> None:
    big = b'{"email": "' + b"a" * settings.MAX_REQUEST_BODY_BYTES + b'"}'
    response = await client.post(
        SIGNUP, content=big, headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_streamed_body_over_limit_is_413(
    client: AsyncClient, settings: Settings
) -> None:
    chunk = b"a" * 65536
    chunks = settings.MAX_REQUEST_BODY_BYTES // len(chunk) + 2

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield chunk

    # No Content-Length: the limit must be enforced while reading.
    response = await client.post(
        SIGNUP, content=body(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_unexpected_error_is_generic_500_with_traceback_only_in_log(
    database_url: str,
) -> None:
    app = create_app(make_settings(DATABASE_URL=database_url))

    async def explode() -> None:
        raise RuntimeError("internal detail: secret table xyz")

    app.add_api_route("/explode", explode)
    transport = ASGITransport(app=app)
    with capture_logs() as captured_logs:
        async with AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get(
                "/explode", headers={"X-Request-ID": "req-500-test"}
            )
    await app.state.database.dispose()

    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert "xyz" not in response.text
    assert "Traceback" not in response.text
    assert error["request_id"] == "req-500-test"
    logs = captured_logs.getvalue()
    assert "RuntimeError: internal detail: secret table xyz" in logs
    assert '"request_id":"req-500-test"' in logs


async def test_request_id_is_echoed_when_sane_and_replaced_otherwise(
    client: AsyncClient,
) -> None:
    sane = await client.get("/health", headers={"X-Request-ID": "abc-123.DEF_4:5"})
    insane = await client.get(
        "/health", headers={"X-Request-ID": "bad id\r\ninjected"[:14]}
    )
    too_long = await client.get("/health", headers={"X-Request-ID": "a" * 200})
    missing = await client.get("/health")

    assert sane.headers["x-request-id"] == "abc-123.DEF_4:5"
    for response in (insane, too_long, missing):
        generated = response.headers["x-request-id"]
        assert len(generated) == 32
        assert generated.isalnum()


async def test_security_headers_on_api_responses(client: AsyncClient) -> None:
    response = await client.get("/api/v1/nope")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "strict-transport-security" not in response.headers


async def test_cors_allows_listed_origin_only(database_url: str) -> None:
    app = create_app(
        make_settings(
            DATABASE_URL=database_url,
            BACKEND_CORS_ORIGINS="https://app.example.com, https://admin.example.com/",
            ENVIRONMENT="production",
            METRICS_TOKEN="scrape-secret-0123456789",
        )
    )
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://t") as http:
        allowed = await http.options(
            SIGNUP,
            headers={
                "Origin": "https://admin.example.com",
                "Access-Control-Request-Method": "POST",
            },
        )
        denied = await http.get("/health", headers={"Origin": "https://evil.example"})
        hsts = (await http.get("/health")).headers.get("strict-transport-security")
    await app.state.database.dispose()

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://admin.example.com"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "access-control-allow-origin" not in denied.headers
    assert hsts is not None
    assert "max-age" in hsts
