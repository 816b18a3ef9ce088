"""Whole user journeys through the public API."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient

from tests.conftest import bearer


async def test_signup_login_me_refresh_logout_then_refresh_fails(
    client: AsyncClient, signup_payload: dict[str, Any]
) -> None:
    signup = await client.post("/api/v1/auth/signup", json=signup_payload)
    assert signup.status_code == 201

    login = await client.post(
        "/api/v1/auth/login",
        data={"username": "ada.lovelace@example.com", "password": "Analytical1"},
    )
    assert login.status_code == 200
    tokens = login.json()

    me = await client.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.json()["data"]["email"] == "Ada.Lovelace@example.com"

    rotated = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert rotated.status_code == 200
    tokens = rotated.json()

    logout = await client.post(
        "/api/v1/auth/logout", headers=bearer(tokens["access_token"])
    )
    assert logout.status_code == 204

    after = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert after.status_code == 401
    denied = await client.get(
        "/api/v1/users/me", headers=bearer(tokens["access_token"])
    )
    assert denied.status_code == 401
