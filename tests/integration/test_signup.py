"""POST /api/v1/auth/signup through every layer, on each database backend."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.config import Settings
from app.models import User

SIGNUP = "/api/v1/auth/signup"


async def count_users(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count(User.id)))).scalar_one())


async def test_signup_creates_user_and_answers_public_envelope(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    response = await client.post(SIGNUP, json=signup_payload)

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "success"
    user = body["data"]
    assert user["email"] == "Ada.Lovelace@example.com"  # as typed (domain by IDNA)
    assert user["username"] == "ada"
    assert user["role"] == "user"
    assert user["is_active"] is True
    assert user["is_verified"] is False
    assert user["created_at"].endswith(("Z", "+00:00"))
    assert "password" not in str(body).lower()
    assert "hashed" not in str(body).lower()


async def test_signup_is_committed_before_201_leaves(
    client: AsyncClient, settings: Settings, signup_payload: dict[str, Any]
) -> None:
    response = await client.post(SIGNUP, json=signup_payload)
    assert response.status_code == 201

    # A second, independent engine (new connection) must see the row at once.
    other = create_async_engine(settings.DATABASE_URL)
    try:
        async with other.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT email, hashed_password FROM users WHERE id = :id"),
                    {"id": response.json()["data"]["id"]},
                )
            ).one()
    finally:
        await other.dispose()
    assert row.email == "Ada.Lovelace@example.com"
    assert row.hashed_password.startswith("$argon2id$")
    assert "Analytical1" not in row.hashed_password


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (
            {"email": "ADA.LOVELACE@example.COM", "username": "other"},
            "EMAIL_ALREADY_REGISTERED",
        ),
        ({"email": "someone@example.com", "username": "ADA"}, "USERNAME_TAKEN"),
    ],
)
async def test_duplicates_are_conflicts_case_insensitively(
    client: AsyncClient,
    engine: AsyncEngine,
    signup_payload: dict[str, Any],
    change: dict[str, str],
    code: str,
) -> None:
    assert (await client.post(SIGNUP, json=signup_payload)).status_code == 201

    response = await client.post(SIGNUP, json={**signup_payload, **change})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == code
    assert await count_users(engine) == 1


async def test_parallel_signups_with_one_email_create_exactly_one_account(
    client: AsyncClient, engine: AsyncEngine, signup_payload: dict[str, Any]
) -> None:
    bodies = [{**signup_payload, "username": f"racer{i}"} for i in range(20)]

    responses = await asyncio.gather(*(client.post(SIGNUP, json=b) for b in bodies))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19
    codes = {r.json()["error"]["code"] for r in responses if r.status_code == 409}
    assert codes == {"EMAIL_ALREADY_REGISTERED"}
    assert await count_users(engine) == 1


async def test_every_bad_field_is_listed(client: AsyncClient) -> None:
    response = await client.post(
        SIGNUP,
        json={
            "email": "not-an-email",
            "username": "ab",
            "password": "short",
            "confirm_password": "short",
            "first_name": "",
            "last_name": "Lovelace",
            "age": 17,
            "phone": "call me",
        },
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    fields = {detail["field"] for detail in error["details"]}
    assert {
        "body.email",
        "body.username",
        "body.password",
        "body.first_name",
        "body.age",
        "body.phone",
    } <= fields
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("password", "fragment"),
    [
        ("alllowercase1", "uppercase"),
        ("ALLUPPERCASE1", "lowercase"),
        ("NoDigitsHere", "digit"),
        ("Sh0rt", "at least 8"),
        ("A1" + "a" * 127, "at most 128"),
    ],
)
async def test_password_rules(
    client: AsyncClient,
    signup_payload: dict[str, Any],
    password: str,
    fragment: str,
) -> None:
    body = {**signup_payload, "password": password, "confirm_password": password}

    response = await client.post(SIGNUP, json=body)

    assert response.status_code == 422
    messages = " ".join(d["message"] for d in response.json()["error"]["details"])
    assert fragment in messages


async def test_password_must_match_confirmation_and_differ_from_email(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    mismatch = await client.post(
        SIGNUP, json={**signup_payload, "confirm_password": "Analytical2"}
    )
    same_as_email = await client.post(
        SIGNUP,
        json={
            **signup_payload,
            "email": "Passw0rd@example.com",
            "password": "Passw0rd@example.com",
            "confirm_password": "Passw0rd@example.com",
        },
    )

    assert mismatch.status_code == 422
    assert "do not match" in mismatch.text
    assert same_as_email.status_code == 422
    assert "email" in same_as_email.text


@pytest.mark.parametrize(
    "field", [{"role": "admin"}, {"is_active": False}, {"is_verified": True}]
)
async def test_privileged_fields_are_rejected(
    client: AsyncClient,
    engine: AsyncEngine,
    signup_payload: dict[str, Any],
    field: dict[str, Any],
) -> None:
    response = await client.post(SIGNUP, json={**signup_payload, **field})

    assert response.status_code == 422
    [detail] = response.json()["error"]["details"]
    assert detail["field"] == f"body.{next(iter(field))}"
    assert await count_users(engine) == 0


async def test_optional_fields_may_be_omitted(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    for key in ("desired_name", "phone", "age"):
        signup_payload.pop(key)

    response = await client.post(SIGNUP, json=signup_payload)

    assert response.status_code == 201
    data = response.json()["data"]
    assert (data["desired_name"], data["phone"], data["age"]) == (None, None, None)


async def test_a_phone_longer_than_stored_is_refused_not_a_500(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    # 21 characters match the pattern; the column holds 20 (PostgreSQL enforces it).
    response = await client.post(
        SIGNUP, json={**signup_payload, "phone": "+12345678901234567890"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "body.phone"
