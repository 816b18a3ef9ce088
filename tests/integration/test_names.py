"""Names are one line of visible text: no control or format characters (issue 17)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import update

from app.main import create_app
from app.models import OutboxEvent, User
from tests.conftest import bearer, login, make_settings, truncate_all
from tests.helpers import MailSink, body_text, mail_sink

SIGNUP = "/api/v1/auth/signup"
USERS = "/api/v1/users"

# A newline and a tab (Cc), a right-to-left override and a zero-width space (Cf),
# each inside a name and at its end (where stripping whitespace used to hide it).
UNSAFE = ["\n", "\t", "\u202e", "\u200b"]
NAMES = ["first_name", "last_name", "desired_name"]


def _variants(field: str, base: str) -> list[Any]:
    return [
        pytest.param(
            field, f"{base[:2]}{char}{base[2:]}", id=f"{field}-{ord(char):04x}"
        )
        for char in UNSAFE
    ] + [
        pytest.param(field, f"{base}{char}", id=f"{field}-trailing-{ord(char):04x}")
        for char in UNSAFE
    ]


SIGNUP_CASES = [
    case for field in [*NAMES, "username"] for case in _variants(field, "adaname")
]
PROFILE_CASES = [case for field in NAMES for case in _variants(field, "adaname")]


def _refused_field(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    return {detail["field"] for detail in error["details"]}


@pytest.mark.parametrize(("field", "value"), SIGNUP_CASES)
async def test_signup_refuses_control_and_format_characters_in_names(
    client: AsyncClient, signup_payload: dict[str, Any], field: str, value: str
) -> None:
    response = await client.post(SIGNUP, json={**signup_payload, field: value})

    assert _refused_field(response) == {f"body.{field}"}


async def test_the_forged_welcome_of_the_issue_is_refused(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    forged = "there,\n\nSECURITY ALERT: confirm at http://evil.example"

    response = await client.post(
        SIGNUP, json={**signup_payload, "desired_name": forged}
    )

    assert _refused_field(response) == {"body.desired_name"}


@pytest.mark.parametrize(("field", "value"), SIGNUP_CASES)
async def test_admin_create_refuses_them(
    client: AsyncClient, admin: User, field: str, value: str
) -> None:
    token = (await login(client, "root"))["access_token"]
    body = {
        "email": "new@example.com",
        "username": "newuser",
        "password": "Passw0rd-New",
        "first_name": "New",
        "last_name": "User",
        field: value,
    }

    response = await client.post(USERS, json=body, headers=bearer(token))

    assert _refused_field(response) == {f"body.{field}"}


@pytest.mark.parametrize(("field", "value"), PROFILE_CASES)
async def test_every_update_refuses_them(
    client: AsyncClient, alice: User, admin: User, field: str, value: str
) -> None:
    own = (await login(client, "alice"))["access_token"]
    root = (await login(client, "root"))["access_token"]

    by_self = await client.patch(
        f"{USERS}/me", json={field: value}, headers=bearer(own)
    )
    by_id = await client.patch(
        f"{USERS}/{alice.id}", json={field: value}, headers=bearer(root)
    )

    assert _refused_field(by_self) == {f"body.{field}"}
    assert _refused_field(by_id) == {f"body.{field}"}
    me = (await client.get(f"{USERS}/me", headers=bearer(own))).json()["data"]
    assert me[field] == getattr(alice, field)  # nothing was stored


async def test_ordinary_names_still_pass(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    body = {
        **signup_payload,
        "first_name": "  Zoë  ",
        "last_name": "O'Brien-Núñez",
        "desired_name": "Ада Лавлейс",
    }

    response = await client.post(SIGNUP, json=body)

    assert response.status_code == 201, response.text
    user = response.json()["data"]
    assert (user["first_name"], user["desired_name"]) == ("Zoë", "Ада Лавлейс")


FORGED = "there,\n\nSECURITY ALERT: confirm at http://evil.example"


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with mail_sink() as running:
        yield running


@pytest.fixture
async def mail_app(
    database_url: str, sink: MailSink, tmp_path: Path
) -> AsyncIterator[Any]:
    """An app whose handlers send through the in-process SMTP server."""
    app = create_app(
        make_settings(
            DATABASE_URL=database_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=sink.port,
            SMTP_TLS=False,
            STORAGE_DIR=str(tmp_path),
        )
    )
    await truncate_all(app.state.database.engine)
    yield app
    await app.state.database.dispose()


async def _welcome_text(app: Any, sink: MailSink, name: str | None) -> str:
    """Sign up, make the stored name `name` (as if written past the API), relay."""
    transport = ASGITransport(app=app, client=("198.51.100.9", 5000))
    async with AsyncClient(transport=transport, base_url="http://t") as http:
        body = {
            "email": "ada@example.com",
            "username": "ada",
            "password": "Analytical1",
            "confirm_password": "Analytical1",
            "first_name": "Ada",
            "last_name": "Lovelace",
        }
        created = await http.post(SIGNUP, json=body)
        assert created.status_code == 201
    if name is not None:
        async with app.state.database.engine.begin() as connection:
            await connection.execute(update(User).values(desired_name=name))
            await connection.execute(
                update(OutboxEvent).values(
                    payload={
                        "user_id": created.json()["data"]["id"],
                        "email": "ada@example.com",
                        "name": name,
                    }
                )
            )
    assert await app.state.events.relay.publish_pending() == 1
    [message] = sink.messages
    return body_text(message)


async def test_a_stored_name_with_newlines_adds_no_line_to_the_welcome_email(
    mail_app: Any, sink: MailSink
) -> None:
    forged = await _welcome_text(mail_app, sink, FORGED)
    sink.messages.clear()
    await truncate_all(mail_app.state.database.engine)
    plain = await _welcome_text(mail_app, sink, None)

    assert len(forged.splitlines()) == len(plain.splitlines())
    assert not any(line.startswith("SECURITY") for line in forged.splitlines())
