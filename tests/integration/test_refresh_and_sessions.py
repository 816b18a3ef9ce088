"""Refresh-token rotation, reuse detection, cookies + CSRF, logout and sessions."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.models import User
from tests.conftest import DEFAULT_PASSWORD, bearer, login
from tests.helpers import claims_of, recorded_statements

REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/users/me"


async def refresh(client: AsyncClient, token: str) -> Any:
    return await client.post(REFRESH, json={"refresh_token": token})


async def test_rotation_issues_a_new_pair_and_kills_the_old_token(
    client: AsyncClient, alice: User
) -> None:
    first = await login(client, "alice")

    rotated = await refresh(client, first["refresh_token"])

    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == first["scope"]
    assert (
        await client.get(ME, headers=bearer(second["access_token"]))
    ).status_code == 200
    assert (await refresh(client, second["refresh_token"])).status_code == 200


def after_the_grace(settings: Settings) -> Any:
    """The clock moved past the window in which a rotated token may come back."""
    grace = timedelta(seconds=settings.REFRESH_TOKEN_REUSE_GRACE_SECONDS + 1)
    return time_machine.travel(grace, tick=True)


async def test_reuse_revokes_the_whole_family(
    client: AsyncClient, alice: User, settings: Settings
) -> None:
    first = await login(client, "alice")
    second = (await refresh(client, first["refresh_token"])).json()

    with after_the_grace(settings):
        reused = await refresh(client, first["refresh_token"])

    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "TOKEN_REUSED"
    # The legitimate holder's newer tokens die with the family.
    after = await refresh(client, second["refresh_token"])
    assert after.json()["error"]["code"] == "INVALID_REFRESH_TOKEN"
    assert (
        await client.get(ME, headers=bearer(second["access_token"]))
    ).status_code == 401


async def test_a_token_sent_again_within_the_grace_gets_the_same_successor(
    client: AsyncClient, alice: User, settings: Settings
) -> None:
    first = await login(client, "alice")
    answer = await refresh(client, first["refresh_token"])  # its answer got lost

    again = await refresh(client, first["refresh_token"])  # the client retries

    assert answer.status_code == again.status_code == 200, again.text
    successor = again.json()["refresh_token"]
    assert successor == answer.json()["refresh_token"]  # nothing the first lacked
    me = await client.get(ME, headers=bearer(again.json()["access_token"]))
    assert me.status_code == 200
    with after_the_grace(settings):
        later = await refresh(client, successor)  # the session lives on
    assert later.status_code == 200, later.text


async def test_a_token_sent_again_after_the_grace_revokes_the_family(
    client: AsyncClient, alice: User, settings: Settings
) -> None:
    first = await login(client, "alice")
    await refresh(client, first["refresh_token"])
    again = await refresh(client, first["refresh_token"])  # within: same successor

    with after_the_grace(settings):
        late = await refresh(client, first["refresh_token"])
        successor = await refresh(client, again.json()["refresh_token"])

    assert late.status_code == 401
    assert late.json()["error"]["code"] == "TOKEN_REUSED"
    assert successor.json()["error"]["code"] == "INVALID_REFRESH_TOKEN"
    assert (
        await client.get(ME, headers=bearer(again.json()["access_token"]))
    ).status_code == 401


async def test_parallel_refreshes_of_one_token_share_one_successor(
    client: AsyncClient, alice: User
) -> None:
    token = (await login(client, "alice"))["refresh_token"]

    responses = await asyncio.gather(*(refresh(client, token) for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1  # two tabs end up holding the same token
    assert (await refresh(client, successors.pop())).status_code == 200


async def test_without_a_grace_parallel_refreshes_of_one_token_have_one_winner(
    client: AsyncClient, alice: User, settings: Settings, monkeypatch: Any
) -> None:
    monkeypatch.setattr(settings, "REFRESH_TOKEN_REUSE_GRACE_SECONDS", 0)
    token = (await login(client, "alice"))["refresh_token"]

    responses = await asyncio.gather(*(refresh(client, token) for _ in range(10)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * 9
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 401} == {
        "TOKEN_REUSED"
    }
    fresh = await login(client, "alice")
    await refresh(client, fresh["refresh_token"])
    at_once = await refresh(client, fresh["refresh_token"])
    assert at_once.json()["error"]["code"] == "TOKEN_REUSED"


async def test_refreshed_access_token_carries_the_users_current_claims(
    client: AsyncClient, alice: User, engine: AsyncEngine, settings: Settings
) -> None:
    first = await login(client, "alice")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE users SET first_name = 'Alicia', desired_name = 'Al'"
                " WHERE id = :id"
            ),
            {"id": alice.id},
        )

    rotated = (await refresh(client, first["refresh_token"])).json()

    claims = claims_of(rotated["access_token"], settings)
    assert claims["sub"] == str(alice.id)
    assert claims["email"] == alice.email
    assert (claims["first_name"], claims["desired_name"]) == ("Alicia", "Al")
    assert claims["sid"] == claims_of(first["access_token"], settings)["sid"]
    assert rotated["scope"] == first["scope"]


async def test_a_refresh_is_one_read_and_three_writes(
    client: AsyncClient, alice: User, engine: AsyncEngine
) -> None:
    token = (await login(client, "alice"))["refresh_token"]

    with recorded_statements(engine) as statements:
        response = await refresh(client, token)

    assert response.status_code == 200
    # The token with its family and user; rotate it, add the next, touch the family.
    verbs = [statement.split(None, 1)[0].upper() for statement in statements]
    assert verbs == ["SELECT", "UPDATE", "INSERT", "UPDATE"]


async def test_refresh_for_a_user_deactivated_outside_the_api_revokes_sessions(
    client: AsyncClient, alice: User, engine: AsyncEngine
) -> None:
    # An operator's UPDATE revokes nothing by itself: the refresh must notice.
    phone, laptop = await login(client, "alice"), await login(client, "alice")
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET is_active = false WHERE id = :id"), {"id": alice.id}
        )

    response = await refresh(client, phone["refresh_token"])

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "INVALID_REFRESH_TOKEN"
    async with engine.connect() as connection:
        reasons = await connection.execute(
            text("SELECT revoked_reason FROM auth_sessions WHERE user_id = :id"),
            {"id": alice.id},
        )
        assert sorted(reasons.scalars()) == ["user_inactive", "user_inactive"]
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET is_active = true WHERE id = :id"), {"id": alice.id}
        )
    assert (await refresh(client, laptop["refresh_token"])).status_code == 401


async def test_unknown_refresh_token_is_401(client: AsyncClient) -> None:
    response = await refresh(client, "x" * 43)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_idle_timeout_and_absolute_lifetime(
    client: AsyncClient, alice: User, settings: Settings
) -> None:
    idle = timedelta(minutes=settings.REFRESH_TOKEN_IDLE_TIMEOUT_MINUTES)
    token = (await login(client, "alice"))["refresh_token"]
    with time_machine.travel(idle + timedelta(minutes=1), tick=True):
        assert (await refresh(client, token)).status_code == 401

    token = (await login(client, "alice"))["refresh_token"]
    lifetime = timedelta(days=settings.REFRESH_TOKEN_ABSOLUTE_LIFETIME_DAYS)
    step = idle - timedelta(hours=1)
    elapsed = timedelta(0)
    while elapsed + step < lifetime:  # keep it busy: only the absolute limit bites
        elapsed += step
        with time_machine.travel(elapsed, tick=True):
            response = await refresh(client, token)
            assert response.status_code == 200
            token = response.json()["refresh_token"]
    with time_machine.travel(lifetime + timedelta(minutes=1), tick=True):
        assert (await refresh(client, token)).status_code == 401


async def test_sessions_list_leaves_out_the_idle_ones(
    client: AsyncClient, alice: User, settings: Settings
) -> None:
    idle = timedelta(minutes=settings.REFRESH_TOKEN_IDLE_TIMEOUT_MINUTES)
    await login(client, "alice")  # never used again
    kept = (await login(client, "alice"))["refresh_token"]
    with time_machine.travel(idle - timedelta(hours=1), tick=True):
        kept = (await refresh(client, kept)).json()["refresh_token"]
    with time_machine.travel(idle + timedelta(minutes=1), tick=True):
        access = (await refresh(client, kept)).json()["access_token"]
        listed = await client.get("/api/v1/auth/sessions", headers=bearer(access))

    # The first one can no longer refresh, so it is not offered for revoking.
    assert [s["current"] for s in listed.json()["data"]] == [True]


async def test_logout_kills_this_session_only(client: AsyncClient, alice: User) -> None:
    phone = await login(client, "alice")
    laptop = await login(client, "alice")

    response = await client.post(
        "/api/v1/auth/logout", headers=bearer(phone["access_token"])
    )

    assert response.status_code == 204
    assert (
        await client.get(ME, headers=bearer(phone["access_token"]))
    ).status_code == 401
    assert (await refresh(client, phone["refresh_token"])).status_code == 401
    assert (
        await client.get(ME, headers=bearer(laptop["access_token"]))
    ).status_code == 200


async def test_logout_all_kills_every_session(client: AsyncClient, alice: User) -> None:
    sessions = [await login(client, "alice") for _ in range(3)]

    response = await client.post(
        "/api/v1/auth/logout-all", headers=bearer(sessions[0]["access_token"])
    )

    assert response.status_code == 204
    for tokens in sessions:
        assert (
            await client.get(ME, headers=bearer(tokens["access_token"]))
        ).status_code == 401
        assert (await refresh(client, tokens["refresh_token"])).status_code == 401


async def test_sessions_are_listed_and_revocable(
    client: AsyncClient, alice: User, admin: User
) -> None:
    phone = await login(client, "alice")
    await client.post(
        "/api/v1/auth/login",
        data={"username": "alice", "password": DEFAULT_PASSWORD},
        headers={"User-Agent": "LaptopBrowser/1.0"},
    )
    await login(client, "root")  # someone else's session is never listed

    listed = await client.get(
        "/api/v1/auth/sessions", headers=bearer(phone["access_token"])
    )

    sessions = listed.json()["data"]
    assert len(sessions) == 2
    assert [s["current"] for s in sessions].count(True) == 1
    laptop = next(s for s in sessions if s["user_agent"] == "LaptopBrowser/1.0")
    assert laptop["ip_address"] == "203.0.113.7"
    assert {"created_at", "last_used_at", "expires_at"} <= set(laptop)

    revoked = await client.delete(
        f"/api/v1/auth/sessions/{laptop['id']}", headers=bearer(phone["access_token"])
    )
    again = await client.delete(
        f"/api/v1/auth/sessions/{laptop['id']}", headers=bearer(phone["access_token"])
    )
    remaining = await client.get(
        "/api/v1/auth/sessions", headers=bearer(phone["access_token"])
    )

    assert revoked.status_code == 204
    assert again.status_code == 404
    assert len(remaining.json()["data"]) == 1


async def test_cannot_revoke_someone_elses_session(
    client: AsyncClient, alice: User, admin: User
) -> None:
    alice_tokens = await login(client, "alice")
    root_tokens = await login(client, "root")
    root_sessions = await client.get(
        "/api/v1/auth/sessions", headers=bearer(root_tokens["access_token"])
    )
    root_session_id = root_sessions.json()["data"][0]["id"]

    response = await client.delete(
        f"/api/v1/auth/sessions/{root_session_id}",
        headers=bearer(alice_tokens["access_token"]),
    )

    assert response.status_code == 404
    assert (
        await client.get(ME, headers=bearer(root_tokens["access_token"]))
    ).status_code == 200


class TestCookieMode:
    async def cookie_login(self, client: AsyncClient) -> Any:
        response = await client.post(
            "/api/v1/auth/login",
            data={
                "username": "alice",
                "password": DEFAULT_PASSWORD,
                "use_cookie": "true",
            },
        )
        assert response.status_code == 200
        return response

    async def test_refresh_token_goes_into_a_hardened_cookie(
        self, client: AsyncClient, alice: User
    ) -> None:
        response = await self.cookie_login(client)

        assert "refresh_token" not in response.json()
        cookies = response.headers.get_list("set-cookie")
        refresh_cookie = next(c for c in cookies if c.startswith("refresh_token="))
        lowered = refresh_cookie.lower()
        for attribute in ("httponly", "secure", "samesite=strict", "path=/api/v1/auth"):
            assert attribute in lowered
        csrf_cookie = next(c for c in cookies if c.startswith("csrf_token="))
        assert "httponly" not in csrf_cookie.lower()

    async def test_cookie_refresh_requires_the_csrf_header(
        self, client: AsyncClient, alice: User
    ) -> None:
        login_response = await self.cookie_login(client)
        refresh_cookie = login_response.cookies["refresh_token"]
        csrf = login_response.cookies["csrf_token"]
        cookies = {"refresh_token": refresh_cookie, "csrf_token": csrf}

        # httpx would not send Secure cookies over http://, so we set the header.
        cookie_header = "; ".join(f"{k}={v}" for k, v in cookies.items())
        missing = await client.post(REFRESH, headers={"Cookie": cookie_header})
        wrong = await client.post(
            REFRESH, headers={"Cookie": cookie_header, "X-CSRF-Token": "0" * 64}
        )
        good = await client.post(
            REFRESH, headers={"Cookie": cookie_header, "X-CSRF-Token": csrf}
        )

        assert missing.status_code == 403
        assert missing.json()["error"]["code"] == "CSRF_FAILED"
        assert wrong.status_code == 403
        assert good.status_code == 200, good.text
        assert "refresh_token" not in good.json()
        assert good.cookies["refresh_token"] != refresh_cookie

    async def test_an_empty_body_token_never_exposes_the_cookie_token(
        self, client: AsyncClient, alice: User
    ) -> None:
        login_response = await self.cookie_login(client)
        csrf = login_response.cookies["csrf_token"]
        cookie = f"refresh_token={login_response.cookies['refresh_token']}"
        headers = {"Cookie": f"{cookie}; csrf_token={csrf}", "X-CSRF-Token": csrf}

        tricked = await client.post(
            REFRESH, json={"refresh_token": ""}, headers=headers
        )
        normal = await client.post(REFRESH, headers=headers)

        # Refused as bad input: the cookie's token is neither used nor returned...
        assert tricked.status_code == 422
        assert tricked.json()["error"]["details"][0]["field"] == "body.refresh_token"
        assert "set-cookie" not in tricked.headers
        # ...so the browser's own next refresh still works.
        assert normal.status_code == 200, normal.text
        assert "refresh_token" not in normal.json()

    async def test_no_cookie_and_no_body_is_401(self, client: AsyncClient) -> None:
        response = await client.post(REFRESH)
        assert response.status_code == 401

    async def test_logout_clears_the_cookies(
        self, client: AsyncClient, alice: User
    ) -> None:
        token = (await self.cookie_login(client)).json()["access_token"]
        response = await client.post("/api/v1/auth/logout", headers=bearer(token))
        cleared = response.headers.get_list("set-cookie")
        assert any(
            c.startswith('refresh_token=""') and "Max-Age=0" in c for c in cleared
        )


@pytest.mark.parametrize("field", ["refresh_token", "extra"])
async def test_refresh_body_is_strict(client: AsyncClient, field: str) -> None:
    body = {field: 5} if field == "refresh_token" else {"extra": "x"}
    response = await client.post(REFRESH, json=body)
    assert response.status_code == 422
