"""Access log lines carry what operators need and nothing secret."""

from __future__ import annotations

import io
import logging
from typing import Any

import orjson
from httpx import AsyncClient

from tests.helpers import capture_logs


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line]


async def test_one_access_line_per_request_with_its_fields(client: AsyncClient) -> None:
    with capture_logs() as stream:
        response = await client.get("/health", headers={"X-Request-ID": "trace-1"})

    access = [line for line in lines(stream) if line["logger"] == "app.access"]
    assert len(access) == 1
    [entry] = access
    assert entry["method"] == "GET"
    assert entry["path"] == "/health"
    assert entry["route"] == "/health"
    assert entry["status"] == response.status_code == 200
    assert entry["request_id"] == "trace-1"
    assert entry["client_ip"] == "203.0.113.7"
    assert isinstance(entry["duration_ms"], float)
    assert "user_id" in entry


async def test_secrets_never_reach_the_log(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    password = "Sup3rSecretPassw0rd"
    bearer = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNlY3JldA"
    cookie = "refresh_token=opaque-cookie-secret-value"
    body = {**signup_payload, "password": password, "confirm_password": password}

    with capture_logs() as stream:
        await client.post(
            "/api/v1/auth/signup",
            json=body,
            headers={"Authorization": f"Bearer {bearer}", "Cookie": cookie},
        )
        await client.post(
            "/api/v1/auth/signup",
            json={**body, "age": 5},
            headers={"Authorization": f"Bearer {bearer}", "Cookie": cookie},
        )
        logging.getLogger("app.test").warning(
            "login attempt with Bearer %s", bearer, extra={"password": password}
        )

    text = stream.getvalue()
    assert text.count('"logger":"app.access"') == 2
    for secret in (password, bearer, "opaque-cookie-secret-value"):
        assert secret not in text
    assert "[REDACTED]" in text
