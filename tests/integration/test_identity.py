"""One identity per person: emails and usernames are unique by NFKC + casefold."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.events import USER_PASSWORD_RESET_REQUESTED
from app.models import OutboxEvent, User
from tests.conftest import bearer, login
from tests.helpers import fullwidth

SIGNUP = "/api/v1/auth/signup"
USERS = "/api/v1/users"
EMAIL = "cuX@example.com"
# The same local part in fullwidth letters.
FULLWIDTH_EMAIL = fullwidth("cuX") + "@example.com"


async def count_users(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count(User.id)))).scalar_one())


def _body(payload: dict[str, Any], **change: str) -> dict[str, Any]:
    return {**payload, "email": EMAIL, "username": "cux", **change}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"email": FULLWIDTH_EMAIL, "username": "other"}, "EMAIL_ALREADY_REGISTERED"),
        ({"email": "CUX@example.com", "username": "other"}, "EMAIL_ALREADY_REGISTERED"),
        (
            {
                "email": fullwidth("cux") + "@" + fullwidth("EXAMPLE") + ".com",
                "username": "other",
            },
            "EMAIL_ALREADY_REGISTERED",
        ),
        ({"email": "other@example.com", "username": "CUX"}, "USERNAME_TAKEN"),
    ],
)
async def test_a_second_signup_with_an_equivalent_spelling_is_409(
    client: AsyncClient,
    engine: AsyncEngine,
    signup_payload: dict[str, Any],
    change: dict[str, str],
    code: str,
) -> None:
    first = await client.post(SIGNUP, json=_body(signup_payload))
    assert first.status_code == 201, first.text

    second = await client.post(SIGNUP, json=_body(signup_payload, **change))

    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == code
    assert await count_users(engine) == 1


async def test_the_fullwidth_spelling_signed_up_first_blocks_the_ascii_one(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    first = await client.post(SIGNUP, json=_body(signup_payload, email=FULLWIDTH_EMAIL))
    second = await client.post(
        SIGNUP, json=_body(signup_payload, email="cux@example.com", username="other")
    )

    assert first.status_code == 201
    assert first.json()["data"]["email"] == FULLWIDTH_EMAIL  # display as typed
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "EMAIL_ALREADY_REGISTERED"


async def test_admin_create_with_an_equivalent_email_is_409(
    client: AsyncClient, admin: User, signup_payload: dict[str, Any]
) -> None:
    assert (await client.post(SIGNUP, json=_body(signup_payload))).status_code == 201
    token = (await login(client, "root"))["access_token"]
    body = {
        "email": FULLWIDTH_EMAIL,
        "username": "cux2",
        "password": "Passw0rd-New",
        "first_name": "C",
        "last_name": "X",
    }

    response = await client.post(USERS, json=body, headers=bearer(token))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "EMAIL_ALREADY_REGISTERED"


@pytest.mark.parametrize(
    "identifier",
    [
        "cuX@example.com",
        "cux@example.com",
        fullwidth("cuX") + "@example.com",
        fullwidth("cux@example.com"),  # fullwidth at-sign and dot too
        " CUX@EXAMPLE.COM ",
        "CuX",
        fullwidth("cux"),
    ],
)
async def test_login_by_any_equivalent_spelling_finds_the_one_account(
    client: AsyncClient, signup_payload: dict[str, Any], identifier: str
) -> None:
    created = await client.post(SIGNUP, json=_body(signup_payload, username="CuX"))
    assert created.status_code == 201

    tokens = await login(client, identifier, signup_payload["password"])

    me = await client.get(f"{USERS}/me", headers=bearer(tokens["access_token"]))
    account = me.json()["data"]
    assert account["id"] == created.json()["data"]["id"]
    assert (account["email"], account["username"]) == (EMAIL, "CuX")  # as typed


async def test_a_fullwidth_username_is_refused_not_stored(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    response = await client.post(
        SIGNUP, json=_body(signup_payload, username=fullwidth("cux"))
    )

    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == {"body.username"}


async def test_an_email_too_long_once_folded_is_422_not_500(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    # U+FDFA is one character that NFKC spells out in 18: 33 as typed, 390 folded.
    email = "\ufdfa" * 21 + "@example.com"

    response = await client.post(SIGNUP, json=_body(signup_payload, email=email))

    assert response.status_code == 422, response.text
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == {"body.email"}


async def test_a_reset_request_by_an_equivalent_spelling_reaches_the_account(
    client: AsyncClient, engine: AsyncEngine, signup_payload: dict[str, Any]
) -> None:
    created = await client.post(SIGNUP, json=_body(signup_payload))
    assert created.status_code == 201

    response = await client.post(
        "/api/v1/auth/password-reset/request",
        json={"email": fullwidth("CUX") + "@Example.com"},
    )

    assert response.status_code == 202
    async with engine.connect() as connection:
        requested = await connection.execute(
            select(OutboxEvent.aggregate_id).where(
                OutboxEvent.event_type == USER_PASSWORD_RESET_REQUESTED
            )
        )
        assert requested.scalars().all() == [str(created.json()["data"]["id"])]
