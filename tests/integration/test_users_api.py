"""The users API: profile, password change, IDOR, mass assignment, admin operations."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import User
from app.services import users as users_service
from tests.conftest import DEFAULT_PASSWORD, audit_rows, bearer, login, make_user
from tests.helpers import pool_use_during_hashes

USERS = "/api/v1/users"


@pytest.fixture
async def tokens(client: AsyncClient, alice: User, admin: User) -> dict[str, str]:
    return {
        "alice": (await login(client, "alice"))["access_token"],
        "root": (await login(client, "root"))["access_token"],
    }


async def test_update_my_profile(client: AsyncClient, tokens: dict[str, str]) -> None:
    response = await client.patch(
        f"{USERS}/me",
        json={"desired_name": "Al", "phone": "+1 555 0100", "age": 30},
        headers=bearer(tokens["alice"]),
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["desired_name"], data["phone"], data["age"]) == (
        "Al",
        "+1 555 0100",
        30,
    )
    assert data["first_name"] == "Alice"  # untouched


@pytest.mark.parametrize(
    "field",
    [
        {"role": "admin"},
        {"is_active": False},
        {"is_verified": True},
        {"email": "x@y.z"},
    ],
)
async def test_mass_assignment_on_me_is_422(
    client: AsyncClient, tokens: dict[str, str], field: dict[str, Any]
) -> None:
    response = await client.patch(
        f"{USERS}/me", json=field, headers=bearer(tokens["alice"])
    )
    assert response.status_code == 422
    me = (await client.get(f"{USERS}/me", headers=bearer(tokens["alice"]))).json()[
        "data"
    ]
    assert (me["role"], me["is_active"], me["is_verified"]) == ("user", True, False)


@pytest.mark.parametrize(
    "field", [{"role": "admin"}, {"is_active": False}, {"is_verified": True}]
)
async def test_nobody_changes_their_own_privileges(
    client: AsyncClient,
    tokens: dict[str, str],
    alice: User,
    admin: User,
    field: dict[str, Any],
) -> None:
    for user, token in ((alice, tokens["alice"]), (admin, tokens["root"])):
        response = await client.patch(
            f"{USERS}/{user.id}", json=field, headers=bearer(token)
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_idor_other_user_is_invisible(
    app: Any, client: AsyncClient, tokens: dict[str, str]
) -> None:
    bob = await make_user(app, "bob")
    headers = bearer(tokens["alice"])

    read = await client.get(f"{USERS}/{bob.id}", headers=headers)
    update = await client.patch(
        f"{USERS}/{bob.id}", json={"first_name": "X"}, headers=headers
    )
    missing = await client.get(f"{USERS}/999999", headers=headers)

    assert read.status_code == update.status_code == missing.status_code == 404
    assert read.json()["error"] == {**read.json()["error"], "code": "NOT_FOUND"}
    bob_token = (await login(client, "bob"))["access_token"]
    bob_me = (await client.get(f"{USERS}/me", headers=bearer(bob_token))).json()["data"]
    assert bob_me["first_name"] == "Test"


async def test_moderator_reads_but_cannot_change_others(
    app: Any, client: AsyncClient, alice: User
) -> None:
    await make_user(app, "mod", role="moderator")
    token = (await login(client, "mod"))["access_token"]

    read = await client.get(f"{USERS}/{alice.id}", headers=bearer(token))
    update = await client.patch(
        f"{USERS}/{alice.id}", json={"first_name": "X"}, headers=bearer(token)
    )

    assert read.status_code == 200
    assert update.status_code == 403


async def test_admin_changes_role_and_status(
    client: AsyncClient, tokens: dict[str, str], alice: User
) -> None:
    response = await client.patch(
        f"{USERS}/{alice.id}",
        json={"role": "moderator", "is_verified": True, "first_name": "Alicia"},
        headers=bearer(tokens["root"]),
    )
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["role"], data["is_verified"], data["first_name"]) == (
        "moderator",
        True,
        "Alicia",
    )


async def test_invalid_role_is_422(
    client: AsyncClient, tokens: dict[str, str], alice: User
) -> None:
    response = await client.patch(
        f"{USERS}/{alice.id}",
        json={"role": "superuser"},
        headers=bearer(tokens["root"]),
    )
    assert response.status_code == 422


async def test_admin_creates_user_with_role(
    client: AsyncClient, tokens: dict[str, str]
) -> None:
    body = {
        "email": "Mod@Example.com",
        "username": "newmod",
        "password": "Moder8tor!",
        "first_name": "New",
        "last_name": "Mod",
        "role": "moderator",
    }
    created = await client.post(USERS, json=body, headers=bearer(tokens["root"]))
    duplicate = await client.post(USERS, json=body, headers=bearer(tokens["root"]))
    by_user = await client.post(
        USERS,
        json={**body, "email": "z@example.com", "username": "z"},
        headers=bearer(tokens["alice"]),
    )

    assert created.status_code == 201
    assert created.json()["data"]["role"] == "moderator"
    assert duplicate.status_code == 409
    assert by_user.status_code == 403
    assert (
        "users:read" in (await login(client, "newmod", "Moder8tor!"))["scope"].split()
    )


async def test_soft_delete_deactivates_and_revokes(
    client: AsyncClient, tokens: dict[str, str], alice: User
) -> None:
    alice_refresh = (await login(client, "alice"))["refresh_token"]

    deleted = await client.delete(f"{USERS}/{alice.id}", headers=bearer(tokens["root"]))
    read = await client.get(f"{USERS}/{alice.id}", headers=bearer(tokens["root"]))

    assert deleted.status_code == 204
    assert read.json()["data"]["is_active"] is False
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": alice_refresh}
    )
    assert refresh.status_code == 401
    relogin = await client.post(
        "/api/v1/auth/login", data={"username": "alice", "password": DEFAULT_PASSWORD}
    )
    assert relogin.status_code == 403


async def test_delete_rules(
    app: Any, client: AsyncClient, tokens: dict[str, str], alice: User, admin: User
) -> None:
    narrow_admin = (await login(client, "root", scope="users:delete"))["access_token"]

    self_delete = await client.delete(
        f"{USERS}/{admin.id}", headers=bearer(tokens["root"])
    )
    hard_without_scope = await client.delete(
        f"{USERS}/{alice.id}?hard=true", headers=bearer(narrow_admin)
    )
    by_user = await client.delete(
        f"{USERS}/{admin.id}", headers=bearer(tokens["alice"])
    )
    missing = await client.delete(f"{USERS}/999999", headers=bearer(tokens["root"]))
    hard = await client.delete(
        f"{USERS}/{alice.id}?hard=true", headers=bearer(tokens["root"])
    )
    gone = await client.get(f"{USERS}/{alice.id}", headers=bearer(tokens["root"]))

    assert self_delete.status_code == 409
    assert hard_without_scope.status_code == 403
    assert by_user.status_code == 403
    assert missing.status_code == 404
    assert hard.status_code == 204
    assert gone.status_code == 404


async def test_list_users_pagination_filters_and_search(
    app: Any, client: AsyncClient, tokens: dict[str, str]
) -> None:
    for name in ("carol", "carla", "dave"):
        await make_user(app, name)
    await make_user(app, "mallory", is_active=False)
    await make_user(app, "mod", role="moderator", first_name="Carmen")
    headers = bearer(tokens["root"])

    first = (await client.get(f"{USERS}?limit=2", headers=headers)).json()["data"]
    second = (await client.get(f"{USERS}?limit=2&offset=2", headers=headers)).json()[
        "data"
    ]
    inactive = (await client.get(f"{USERS}?is_active=false", headers=headers)).json()[
        "data"
    ]
    mods = (await client.get(f"{USERS}?role=moderator", headers=headers)).json()["data"]
    prefix = (await client.get(f"{USERS}?q=CAR", headers=headers)).json()["data"]
    wildcard = (await client.get(f"{USERS}?q=%25", headers=headers)).json()["data"]

    assert first["total"] == second["total"] == 7
    assert len(first["items"]) == 2
    assert first["items"][-1]["id"] < second["items"][0]["id"]
    assert [u["username"] for u in inactive["items"]] == ["mallory"]
    assert [u["username"] for u in mods["items"]] == ["mod"]
    assert sorted(u["username"] for u in prefix["items"]) == ["carla", "carol", "mod"]
    assert wildcard["total"] == 0  # % is a literal, not a wildcard


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "role=root"])
async def test_list_users_bad_query_is_422(
    client: AsyncClient, tokens: dict[str, str], query: str
) -> None:
    response = await client.get(f"{USERS}?{query}", headers=bearer(tokens["root"]))
    assert response.status_code == 422


async def change_password(
    client: AsyncClient,
    token: str,
    *,
    current: str = DEFAULT_PASSWORD,
    new: str = "Brand-New-Pass-9",
    confirm: str | None = None,
) -> Response:
    """POST /users/me/password as the holder of `token`."""
    body = {
        "current_password": current,
        "new_password": new,
        "confirm_password": new if confirm is None else confirm,
    }
    return await client.post(f"{USERS}/me/password", json=body, headers=bearer(token))


class TestPasswordChange:
    async def test_changes_password_and_revokes_other_sessions(
        self, client: AsyncClient, alice: User
    ) -> None:
        current = await login(client, "alice")
        other = await login(client, "alice")

        response = await change_password(client, current["access_token"])

        assert response.status_code == 204
        assert (
            await client.get(f"{USERS}/me", headers=bearer(current["access_token"]))
        ).status_code == 200
        assert (
            await client.get(f"{USERS}/me", headers=bearer(other["access_token"]))
        ).status_code == 401
        refreshed = await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]}
        )
        assert refreshed.status_code == 401
        await login(client, "alice", "Brand-New-Pass-9")
        old = await client.post(
            "/api/v1/auth/login",
            data={"username": "alice", "password": DEFAULT_PASSWORD},
        )
        assert old.status_code == 401

    async def test_no_database_connection_is_held_while_the_passwords_hash(
        self,
        app: Any,
        client: AsyncClient,
        alice: User,
        engine: AsyncEngine,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        token = (await login(client, "alice"))["access_token"]
        held = pool_use_during_hashes(monkeypatch, app.state.password_hasher, engine)
        response = await change_password(client, token)

        # Password changes queueing for the hash threads must not hold the pool.
        assert response.status_code == 204
        assert held == [0, 0]  # the check of the current one, the new hash
        monkeypatch.undo()
        await login(client, "alice", "Brand-New-Pass-9")

    async def test_wrong_current_password_is_refused(
        self, client: AsyncClient, alice: User
    ) -> None:
        token = (await login(client, "alice"))["access_token"]
        response = await change_password(client, token, current="Wrong-Pass-1")
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_CURRENT_PASSWORD"
        await login(client, "alice")  # unchanged

    @pytest.mark.parametrize(
        ("new", "confirm"),
        [("weakpass", "weakpass"), ("Strong-Pass-1", "Strong-Pass-2")],
    )
    async def test_new_password_rules(
        self, client: AsyncClient, alice: User, new: str, confirm: str
    ) -> None:
        token = (await login(client, "alice"))["access_token"]
        response = await change_password(client, token, new=new, confirm=confirm)
        assert response.status_code == 422


@pytest.mark.parametrize("field", ["first_name", "last_name"])
async def test_required_profile_fields_cannot_be_nulled(
    client: AsyncClient, tokens: dict[str, str], field: str
) -> None:
    response = await client.patch(
        f"{USERS}/me", json={field: None, "age": 40}, headers=bearer(tokens["alice"])
    )
    assert response.status_code == 422
    assert "cannot be null" in response.text
    me = (await client.get(f"{USERS}/me", headers=bearer(tokens["alice"]))).json()[
        "data"
    ]
    assert (me["first_name"], me["last_name"], me["age"]) == ("Alice", "Liddell", None)


async def test_admin_cannot_null_a_role(
    client: AsyncClient, tokens: dict[str, str], alice: User
) -> None:
    response = await client.patch(
        f"{USERS}/{alice.id}", json={"role": None}, headers=bearer(tokens["root"])
    )
    assert response.status_code == 422


def _decoded(changes: Any) -> Any:
    # SQLite returns JSON text through raw SQL
    return orjson.loads(changes) if isinstance(changes, str) else changes


async def test_two_admins_changing_one_user_at_once_both_count(
    app: Any,
    client: AsyncClient,
    engine: AsyncEngine,
    tokens: dict[str, str],
    alice: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await make_user(app, "root2", role="admin")
    second = (await login(client, "root2"))["access_token"]
    audit_user = users_service._audit_user

    async def slow_audit(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.1)  # both requests have read the user by now
        await audit_user(*args, **kwargs)

    monkeypatch.setattr(users_service, "_audit_user", slow_audit)

    answers = await asyncio.gather(
        client.patch(
            f"{USERS}/{alice.id}",
            json={"role": "moderator"},
            headers=bearer(tokens["root"]),
        ),
        client.patch(
            f"{USERS}/{alice.id}", json={"role": "admin"}, headers=bearer(second)
        ),
    )

    assert [answer.status_code for answer in answers] == [200, 200]
    rows = await audit_rows(engine, action="user.role_change")
    changes = [_decoded(row["changed_fields"])["role"] for row in rows]
    # One after the other: the second saw what the first wrote, and the stored
    # role is what the last audit row says.
    assert changes[0]["old"] == "user"
    assert changes[1]["old"] == changes[0]["new"]
    async with engine.connect() as connection:
        role, version = (
            await connection.execute(
                text("SELECT role, token_version FROM users WHERE id = :id"),
                {"id": alice.id},
            )
        ).one()
    assert role == changes[1]["new"]
    assert version == 2  # each change retired the tokens before it


async def test_deactivating_an_inactive_user_changes_and_records_nothing(
    client: AsyncClient, engine: AsyncEngine, tokens: dict[str, str], alice: User
) -> None:
    for _ in range(3):
        response = await client.delete(
            f"{USERS}/{alice.id}", headers=bearer(tokens["root"])
        )
        assert response.status_code == 204

    assert len(await audit_rows(engine, action="user.deactivate")) == 1
    async with engine.connect() as connection:
        announced = (
            await connection.execute(
                text(
                    "SELECT count(*) FROM outbox_events WHERE event_type = 'user.deactivated'"
                )
            )
        ).scalar_one()
    assert announced == 1


async def test_a_hard_deleted_users_token_never_works_again_even_for_a_reused_id(
    app: Any, client: AsyncClient, tokens: dict[str, str]
) -> None:
    mallory = await make_user(app, "mallory")  # the highest id
    old_token = (await login(client, "mallory"))["access_token"]
    assert (
        await client.get(f"{USERS}/me", headers=bearer(old_token))
    ).status_code == 200
    deleted = await client.delete(
        f"{USERS}/{mallory.id}?hard=true", headers=bearer(tokens["root"])
    )
    assert deleted.status_code == 204

    # SQLite gives the next user the freed id; PostgreSQL's sequence does not.
    await make_user(app, "bob")
    bob = (await login(client, "bob"))["access_token"]
    assert (await client.get(f"{USERS}/me", headers=bearer(bob))).status_code == 200
    me = await client.get(f"{USERS}/me", headers=bearer(old_token))

    assert me.status_code == 401


@pytest.mark.parametrize(
    ("service", "method", "suffix", "body"),
    [
        ("update_user", "PATCH", "", {"role": "user"}),
        ("update_user", "PATCH", "", {"is_active": False}),
        ("delete_user", "DELETE", "", None),
        ("delete_user", "DELETE", "?hard=true", None),
    ],
    ids=["demote", "deactivate", "delete", "hard-delete"],
)
async def test_two_admins_ending_each_other_at_once_leave_one_admin(
    app: Any,
    client: AsyncClient,
    engine: AsyncEngine,
    admin: User,
    monkeypatch: pytest.MonkeyPatch,
    service: str,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    other = await make_user(app, "root2", role="admin")
    tokens = {
        admin.id: (await login(client, "root"))["access_token"],
        other.id: (await login(client, "root2"))["access_token"],
    }
    original = getattr(users_service, service)
    both_in = asyncio.Barrier(2)

    async def after_both_authenticated(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(5):
            await both_in.wait()  # each request has passed its token check
        return await original(*args, **kwargs)

    monkeypatch.setattr(users_service, service, after_both_authenticated)

    def end(target: User, caller: User) -> Any:
        return client.request(
            method,
            f"{USERS}/{target.id}{suffix}",
            json=body,
            headers=bearer(tokens[caller.id]),
        )

    answers = await asyncio.gather(end(other, admin), end(admin, other))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses[1] == 409, [answer.text for answer in answers]
    assert statuses[0] in (200, 204)
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert refused.json()["error"]["code"] == "LAST_ADMIN"
    async with engine.connect() as connection:
        admins = (
            await connection.execute(
                text("SELECT count(*) FROM users WHERE role = 'admin' AND is_active")
            )
        ).scalar_one()
    assert admins == 1


async def test_a_lone_admin_cannot_end_themselves(
    client: AsyncClient, engine: AsyncEngine, admin: User
) -> None:
    headers = bearer((await login(client, "root"))["access_token"])

    demote = await client.patch(
        f"{USERS}/{admin.id}", json={"role": "user"}, headers=headers
    )
    deactivate = await client.patch(
        f"{USERS}/{admin.id}", json={"is_active": False}, headers=headers
    )
    delete = await client.delete(f"{USERS}/{admin.id}?hard=true", headers=headers)

    # Nobody changes their own privileges (403) nor deletes themselves (409).
    assert (demote.status_code, deactivate.status_code) == (403, 403)
    assert delete.status_code == 409
    me = await client.get(f"{USERS}/me", headers=headers)
    assert (me.json()["data"]["role"], me.json()["data"]["is_active"]) == (
        "admin",
        True,
    )
