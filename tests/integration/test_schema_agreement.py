"""The OpenAPI document says what the API does: nulls, date-times, download types."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient

from app.models import User
from tests.conftest import bearer, login

API = "/api/v1"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

# (schema, field, a route taking the schema) of every PATCH field whose column
# is NOT NULL: it may be omitted, never nulled.
NOT_NULLABLE = [
    ("ItemUpdate", "title", "item"),
    ("ItemUpdate", "status", "item"),
    ("ProfileUpdate", "first_name", "me"),
    ("ProfileUpdate", "last_name", "me"),
    ("UserUpdate", "first_name", "user"),
    ("UserUpdate", "last_name", "user"),
    ("UserUpdate", "role", "user"),
    ("UserUpdate", "is_active", "user"),
    ("UserUpdate", "is_verified", "user"),
]
# Null is meaningful here: it clears an optional value.
NULLABLE = [
    ("ItemUpdate", "description"),
    ("ProfileUpdate", "desired_name"),
    ("ProfileUpdate", "phone"),
    ("ProfileUpdate", "age"),
    ("UserUpdate", "phone"),
]


def offers_null(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") == "null" for option in options)


@pytest.fixture
async def document(client: AsyncClient) -> dict[str, Any]:
    response = await client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def properties(document: dict[str, Any], schema: str) -> dict[str, Any]:
    component: dict[str, Any] = document["components"]["schemas"][schema]
    assert "required" not in component  # every PATCH field may be omitted
    props: dict[str, Any] = component["properties"]
    return props


@pytest.mark.parametrize(("schema", "field", "route"), NOT_NULLABLE)
async def test_a_field_that_refuses_null_is_not_documented_as_nullable(
    document: dict[str, Any], schema: str, field: str, route: str
) -> None:
    declared = properties(document, schema)[field]
    assert not offers_null(declared), declared
    assert declared.get("default", "absent") is not None


@pytest.mark.parametrize(("schema", "field"), NULLABLE)
async def test_a_field_null_clears_stays_documented_as_nullable(
    document: dict[str, Any], schema: str, field: str
) -> None:
    assert offers_null(properties(document, schema)[field])


@pytest.fixture
async def targets(
    client: AsyncClient, alice: User, admin: User
) -> dict[str, tuple[str, str]]:
    """Route kind -> (URL, token allowed to PATCH it)."""
    user_token = (await login(client, "alice"))["access_token"]
    admin_token = (await login(client, "root"))["access_token"]
    created = await client.post(
        f"{API}/items", json={"title": "Kept"}, headers=bearer(user_token)
    )
    assert created.status_code == 201
    return {
        "item": (f"{API}/items/{created.json()['data']['id']}", user_token),
        "me": (f"{API}/users/me", user_token),
        "user": (f"{API}/users/{alice.id}", admin_token),
    }


@pytest.mark.parametrize(("schema", "field", "route"), NOT_NULLABLE)
async def test_a_null_where_refused_is_a_422_naming_the_field(
    client: AsyncClient,
    targets: dict[str, tuple[str, str]],
    schema: str,
    field: str,
    route: str,
) -> None:
    url, token = targets[route]
    before = (await client.get(url, headers=bearer(token))).json()["data"]
    response = await client.patch(url, json={field: None}, headers=bearer(token))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [detail["field"] for detail in error["details"]] == [f"body.{field}"]
    after = (await client.get(url, headers=bearer(token))).json()["data"]
    assert after[field] == before[field]


async def test_null_still_clears_an_optional_value(
    client: AsyncClient, targets: dict[str, tuple[str, str]]
) -> None:
    url, token = targets["me"]
    set_age = await client.patch(url, json={"age": 40}, headers=bearer(token))
    assert set_age.json()["data"]["age"] == 40
    cleared = await client.patch(url, json={"age": None}, headers=bearer(token))
    assert cleared.status_code == 200
    assert cleared.json()["data"]["age"] is None


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/admin/audit", "until"),
        ("/admin/audit", "since"),
        ("/items", "created_after"),
        ("/items", "created_before"),
    ],
)
@pytest.mark.parametrize(
    "value",
    ["0.5", "1700000000", "2025-01-31", "2025-01-31T12:00Z", "2025-01-31 12:00:00Z"],
)
async def test_a_date_time_query_value_must_be_rfc_3339(
    client: AsyncClient, admin: User, path: str, parameter: str, value: str
) -> None:
    token = (await login(client, "root"))["access_token"]
    response = await client.get(
        f"{API}{path}", params={parameter: value}, headers=bearer(token)
    )
    assert response.status_code == 422, response.text
    fields = [detail["field"] for detail in response.json()["error"]["details"]]
    assert fields == [f"query.{parameter}"]


@pytest.mark.parametrize("path", ["/admin/audit?until=", "/items?created_after="])
@pytest.mark.parametrize(
    "value", ["2025-01-31T12:00:00Z", "2025-01-31t12:00:00.25%2B01:00"]
)
async def test_an_rfc_3339_date_time_query_value_is_taken(
    client: AsyncClient, admin: User, path: str, value: str
) -> None:
    token = (await login(client, "root"))["access_token"]
    response = await client.get(f"{API}{path}{value}", headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_a_download_answers_a_type_the_document_lists(
    client: AsyncClient, document: dict[str, Any], targets: dict[str, tuple[str, str]]
) -> None:
    url, token = targets["item"]
    uploaded = await client.post(
        f"{url}/attachments",
        files={"file": ("dot.png", PNG, "application/octet-stream")},
        headers=bearer(token),
    )
    assert uploaded.status_code == 201, uploaded.text
    download = await client.get(
        f"{url}/attachments/{uploaded.json()['data']['id']}", headers=bearer(token)
    )
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert download.content == PNG
    operation = document["paths"][
        f"{API}/items/{{item_id}}/attachments/{{attachment_id}}"
    ]
    documented = operation["get"]["responses"]["200"]["content"]
    assert "image/png" in documented
    assert documented["image/png"]["schema"] == {"type": "string", "format": "binary"}
    assert set(documented) == {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "application/pdf",
        "text/plain",
    }
