"""The audit trail: one row per mutation, secrets redacted, append-only."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import User
from tests.conftest import DEFAULT_PASSWORD, audit_rows, bearer, login

ITEMS = "/api/v1/items"


async def actions(engine: AsyncEngine) -> list[str]:
    return [row["action"] for row in await audit_rows(engine)]


async def test_signup_is_audited_with_secrets_redacted(
    client: AsyncClient, engine: AsyncEngine, signup_payload: dict[str, Any]
) -> None:
    response = await client.post(
        "/api/v1/auth/signup", json=signup_payload, headers={"X-Request-ID": "signup-1"}
    )
    [row] = await audit_rows(engine)
    user_id = response.json()["data"]["id"]
    assert (row["action"], row["entity_type"], row["entity_id"]) == (
        "user.create",
        "user",
        str(user_id),
    )
    assert row["actor_id"] == user_id
    assert row["request_id"] == "signup-1"
    assert row["client_ip"] == "203.0.113.7"
    changes = row["changed_fields"]
    if isinstance(changes, str):  # SQLite returns JSON text through raw SQL
        changes = json.loads(changes)
    assert changes["email"] == {"old": None, "new": "Ada.Lovelace@example.com"}
    assert changes["hashed_password"] == {"old": None, "new": "[REDACTED]"}
    assert "Analytical1" not in str(row)
    assert "$argon2" not in str(row)


async def test_every_mutating_route_writes_one_row(
    app: Any, client: AsyncClient, engine: AsyncEngine, alice: User, admin: User
) -> None:
    alice_token = (await login(client, "alice"))["access_token"]
    root = (await login(client, "root"))["access_token"]
    before = len(await audit_rows(engine))  # the two users' creation

    async def expect(action: str, call: Any) -> Any:
        count = len(await audit_rows(engine))
        response = await call
        assert response.status_code < 300, response.text
        rows = await audit_rows(engine)
        assert [row["action"] for row in rows[count:]] == [action]
        return response

    item = await expect(
        "item.create",
        client.post(ITEMS, json={"title": "a"}, headers=bearer(alice_token)),
    )
    item_id = item.json()["data"]["id"]
    await expect(
        "item.update",
        client.patch(
            f"{ITEMS}/{item_id}", json={"title": "b"}, headers=bearer(alice_token)
        ),
    )
    upload = await expect(
        "attachment.create",
        client.post(
            f"{ITEMS}/{item_id}/attachments",
            files={"file": ("a.txt", b"hi")},
            headers=bearer(alice_token),
        ),
    )
    attachment_id = upload.json()["data"]["id"]
    await expect(
        "attachment.delete",
        client.delete(
            f"{ITEMS}/{item_id}/attachments/{attachment_id}",
            headers=bearer(alice_token),
        ),
    )
    await expect(
        "item.delete", client.delete(f"{ITEMS}/{item_id}", headers=bearer(alice_token))
    )
    await expect(
        "user.update",
        client.patch("/api/v1/users/me", json={"age": 40}, headers=bearer(alice_token)),
    )
    await expect(
        "user.role_change",
        client.patch(
            f"/api/v1/users/{alice.id}",
            json={"role": "moderator"},
            headers=bearer(root),
        ),
    )
    alice_token = (await login(client, "alice"))["access_token"]
    await login(client, "alice")  # a second session, revoked below
    sessions = (
        await client.get("/api/v1/auth/sessions", headers=bearer(alice_token))
    ).json()["data"]
    other_id = next(s["id"] for s in sessions if not s["current"])
    await expect(
        "session.revoke",
        client.delete(f"/api/v1/auth/sessions/{other_id}", headers=bearer(alice_token)),
    )
    await expect(
        "user.password_change",
        client.post(
            "/api/v1/users/me/password",
            json={
                "current_password": DEFAULT_PASSWORD,
                "new_password": "New-Pass-123",
                "confirm_password": "New-Pass-123",
            },
            headers=bearer(alice_token),
        ),
    )
    await expect(
        "session.revoke",
        client.post("/api/v1/auth/logout", headers=bearer(alice_token)),
    )
    alice_token = (await login(client, "alice", "New-Pass-123"))["access_token"]
    await expect(
        "session.revoke_all",
        client.post("/api/v1/auth/logout-all", headers=bearer(alice_token)),
    )
    created = await expect(
        "user.create",
        client.post(
            "/api/v1/users",
            json={
                "email": "n@example.com",
                "username": "newbie",
                "password": "Newbie-123",
                "first_name": "N",
                "last_name": "B",
            },
            headers=bearer(root),
        ),
    )
    newbie = created.json()["data"]["id"]
    await expect(
        "user.deactivate",
        client.delete(f"/api/v1/users/{newbie}", headers=bearer(root)),
    )
    await expect(
        "user.delete",
        client.delete(f"/api/v1/users/{newbie}?hard=true", headers=bearer(root)),
    )
    assert len(await audit_rows(engine)) == before + 14  # one per call above


async def test_bulk_writes_one_row_per_item(
    client: AsyncClient, engine: AsyncEngine, alice: User
) -> None:
    token = (await login(client, "alice"))["access_token"]
    await client.post(
        f"{ITEMS}/bulk",
        json={"items": [{"title": "a"}, {"title": "b"}]},
        headers=bearer(token),
    )
    assert (await actions(engine)).count("item.create") == 2


async def test_password_change_row_redacts_the_hash(
    client: AsyncClient, engine: AsyncEngine, alice: User
) -> None:
    token = (await login(client, "alice"))["access_token"]
    await client.post(
        "/api/v1/users/me/password",
        json={
            "current_password": DEFAULT_PASSWORD,
            "new_password": "Brand-New-9",
            "confirm_password": "Brand-New-9",
        },
        headers=bearer(token),
    )
    [row] = await audit_rows(engine, action="user.password_change")
    text_row = str(row["changed_fields"])
    assert "[REDACTED]" in text_row
    assert "argon2" not in text_row
    assert "Brand-New-9" not in text_row


async def test_refresh_reuse_revocation_is_audited(
    app: Any, client: AsyncClient, engine: AsyncEngine, alice: User
) -> None:
    tokens = await login(client, "alice")
    await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    grace = app.state.settings.REFRESH_TOKEN_REUSE_GRACE_SECONDS
    with time_machine.travel(timedelta(seconds=grace + 1), tick=True):
        await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
    [row] = await audit_rows(engine, action="session.revoke")
    assert row["actor_name"] == "system"
    assert "token_reuse" in str(row["changed_fields"])


async def test_admin_searches_the_trail(
    app: Any, client: AsyncClient, alice: User, admin: User
) -> None:
    alice_token = (await login(client, "alice"))["access_token"]
    root = (await login(client, "root"))["access_token"]
    for title in ("a", "b", "c"):
        await client.post(ITEMS, json={"title": title}, headers=bearer(alice_token))

    async def search(query: str) -> dict[str, Any]:
        response = await client.get(
            f"/api/v1/admin/audit?{query}", headers=bearer(root)
        )
        assert response.status_code == 200
        data: dict[str, Any] = response.json()["data"]
        return data

    by_action = await search("action=item.create&limit=2")
    by_actor = await search(f"actor_id={alice.id}&entity_type=item")
    by_time = await search("since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z")
    second_page = await search("action=item.create&limit=2&offset=2")

    assert by_action["total"] == 3
    assert len(by_action["items"]) == 2
    assert by_action["items"][0]["occurred_at"] >= by_action["items"][1]["occurred_at"]
    assert by_actor["total"] == 3
    assert by_time["total"] == 0
    assert len(second_page["items"]) == 1
    denied = await client.get("/api/v1/admin/audit", headers=bearer(alice_token))
    assert denied.status_code == 403


async def test_postgres_refuses_to_change_history(
    client: AsyncClient, engine: AsyncEngine, backend: str, alice: User
) -> None:
    if backend != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    assert await audit_rows(engine)
    for statement in (
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as connection:
                await connection.execute(text(statement))
    assert {row["action"] for row in await audit_rows(engine)} == {"user.create"}
