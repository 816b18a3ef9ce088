"""Self-service needs the account scopes: a token asked for with fewer can do less."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.script import ScriptDirectory
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import text

from app.database import alembic_config, upgrade_to_head
from app.main import create_app
from app.models import User
from tests.conftest import (
    DEFAULT_PASSWORD,
    TEST_DATABASE_URL,
    _create_postgres_database,
    _drop_postgres_database,
    bearer,
    login,
    make_settings,
    make_user,
)

ME = "/api/v1/users/me"
NEW_PASSWORD = "Fresh-Passw0rd"


async def _other_session(client: AsyncClient) -> str:
    """Open a second session of alice's and return its id."""
    token = (await login(client, "alice"))["access_token"]
    sessions = await client.get("/api/v1/auth/sessions", headers=bearer(token))
    return str(next(s["id"] for s in sessions.json()["data"] if s["current"]))


def _self_service(user_id: int, session_id: str) -> list[tuple[str, str, Any]]:
    """Every self-service request: (method, path, JSON body), logout-all last."""
    return [
        ("GET", ME, None),
        ("GET", f"/api/v1/users/{user_id}", None),
        ("GET", "/api/v1/auth/sessions", None),
        ("PATCH", ME, {"first_name": "Alicia"}),
        ("PATCH", f"/api/v1/users/{user_id}", {"last_name": "Pleasance"}),
        ("POST", "/api/v1/auth/verify-email/request", None),
        ("DELETE", f"/api/v1/auth/sessions/{session_id}", None),
        (
            "POST",
            f"{ME}/password",
            {
                "current_password": DEFAULT_PASSWORD,
                "new_password": NEW_PASSWORD,
                "confirm_password": NEW_PASSWORD,
            },
        ),
        ("POST", "/api/v1/auth/logout-all", None),
    ]


async def _send(
    client: AsyncClient, token: str, method: str, path: str, body: Any
) -> Response:
    return await client.request(method, path, json=body, headers=bearer(token))


async def test_a_token_without_account_scopes_cannot_touch_the_account(
    client: AsyncClient, alice: User
) -> None:
    narrow = await login(client, "alice", scope="items:read")
    assert narrow["scope"] == "items:read"
    session_id = await _other_session(client)

    answers = {
        (method, path): await _send(client, narrow["access_token"], method, path, body)
        for method, path, body in _self_service(alice.id, session_id)
    }

    for (method, path), answer in answers.items():
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "INSUFFICIENT_SCOPE"
        assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert (
        answers["GET", ME].headers["www-authenticate"].endswith('scope="account:read"')
    )
    assert (
        answers["PATCH", ME]
        .headers["www-authenticate"]
        .endswith('scope="account:write"')
    )
    # Nothing changed: the old password still logs in, the session still lists.
    default = (await login(client, "alice"))["access_token"]
    me = (await client.get(ME, headers=bearer(default))).json()["data"]
    assert (me["first_name"], me["last_name"]) == ("Alice", "Liddell")
    listed = await client.get("/api/v1/auth/sessions", headers=bearer(default))
    assert session_id in {s["id"] for s in listed.json()["data"]}
    # And the narrow token still does what it was asked for.
    items = await client.get("/api/v1/items", headers=bearer(narrow["access_token"]))
    assert items.status_code == 200


async def test_a_default_login_still_does_all_of_it(
    client: AsyncClient, alice: User
) -> None:
    body = await login(client, "alice")
    assert {"account:read", "account:write"} <= set(body["scope"].split())
    session_id = await _other_session(client)

    codes = [
        (await _send(client, body["access_token"], method, path, payload)).status_code
        for method, path, payload in _self_service(alice.id, session_id)
    ]

    assert codes == [200, 200, 200, 200, 200, 202, 204, 204, 204]
    await login(client, "alice", NEW_PASSWORD)


async def test_a_narrow_token_can_still_log_its_own_session_out(
    client: AsyncClient, alice: User
) -> None:
    narrow = await login(client, "alice", scope="items:read")
    token = narrow["access_token"]

    logout = await client.post("/api/v1/auth/logout", headers=bearer(token))

    assert logout.status_code == 204
    assert (await client.get("/api/v1/items", headers=bearer(token))).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": narrow["refresh_token"]}
    )
    assert refreshed.status_code == 401


async def test_refresh_keeps_the_scopes_granted_at_login(
    client: AsyncClient, alice: User
) -> None:
    narrow = await login(client, "alice", scope="items:read")
    wide = await login(client, "alice")

    narrow_next = (
        await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": narrow["refresh_token"]}
        )
    ).json()
    wide_next = (
        await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": wide["refresh_token"]}
        )
    ).json()

    assert narrow_next["scope"] == "items:read"
    assert wide_next["scope"] == wide["scope"]
    narrow_me = await client.get(ME, headers=bearer(narrow_next["access_token"]))
    assert narrow_me.status_code == 403
    wide_me = await client.get(ME, headers=bearer(wide_next["access_token"]))
    assert wide_me.status_code == 200


async def test_openapi_lists_the_account_scopes_on_self_service(
    client: AsyncClient,
) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    flow = document["components"]["securitySchemes"]["OAuth2PasswordBearer"]
    assert {"account:read", "account:write"} <= set(flow["flows"]["password"]["scopes"])

    def scopes(method: str, path: str) -> list[str]:
        operation = document["paths"][f"/api/v1{path}"][method]
        return [
            scope
            for entry in operation["security"]
            for scope in entry.get("OAuth2PasswordBearer", [])
        ]

    assert scopes("get", "/users/me") == ["account:read"]
    assert scopes("get", "/auth/sessions") == ["account:read"]
    assert scopes("patch", "/users/me") == ["account:write"]
    assert scopes("post", "/users/me/password") == ["account:write"]
    assert scopes("post", "/auth/logout-all") == ["account:write"]
    assert scopes("delete", "/auth/sessions/{session_id}") == ["account:write"]
    assert scopes("post", "/auth/verify-email/request") == ["account:write"]
    assert scopes("post", "/auth/logout") == []


@pytest.fixture
async def fresh_database_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of the same backend, migrated to head, for this test only."""
    if database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
        return
    assert TEST_DATABASE_URL is not None
    name, url = await _create_postgres_database(TEST_DATABASE_URL)
    try:
        await asyncio.to_thread(upgrade_to_head, url)
        yield url
    finally:
        await _drop_postgres_database(TEST_DATABASE_URL, name)


def _rerun_account_scopes_migration(url: str) -> None:
    """Run the account-scopes migration again over the rows now in `url`."""
    config = alembic_config(url)
    # A default, not StopIteration: raised in a thread, that would hang the test.
    script = next(
        (
            revision
            for revision in ScriptDirectory.from_config(config).walk_revisions()
            if revision.path.endswith("_account_scopes.py")
        ),
        None,
    )
    assert script is not None, "no *_account_scopes.py migration"
    assert isinstance(script.down_revision, str)
    alembic_command.stamp(config, script.down_revision)  # the schema is unchanged
    alembic_command.upgrade(config, script.revision)
    alembic_command.stamp(config, "heads")


async def test_sessions_opened_before_the_account_scopes_keep_self_service(
    fresh_database_url: str,
) -> None:
    app = create_app(make_settings(DATABASE_URL=fresh_database_url))
    transport = ASGITransport(app=app, client=("192.0.2.8", 999))
    try:
        async with AsyncClient(transport=transport, base_url="http://t") as http:
            await make_user(app, "legacy")
            before = await login(http, "legacy")
            # What a default login stored before account scopes existed.
            async with app.state.database.engine.begin() as connection:
                await connection.execute(
                    text("UPDATE auth_sessions SET scope = :s"),
                    {"s": "items:delete items:read items:write"},
                )
            await asyncio.to_thread(_rerun_account_scopes_migration, fresh_database_url)

            after = await http.post(
                "/api/v1/auth/refresh", json={"refresh_token": before["refresh_token"]}
            )
            me = await http.get(ME, headers=bearer(after.json()["access_token"]))
    finally:
        await app.state.database.dispose()

    assert after.json()["scope"] == (
        "account:read account:write items:delete items:read items:write"
    )
    assert me.status_code == 200
