"""POST /auth/login: the OAuth2 password grant, its token and its failures."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from httpx import AsyncClient
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.models import User
from tests.conftest import DEFAULT_PASSWORD, bearer, login, make_user
from tests.helpers import pool_use_during_hashes

LOGIN = "/api/v1/auth/login"


async def test_form_login_returns_rfc6749_token_response(
    client: AsyncClient, alice: User
) -> None:
    response = await client.post(
        LOGIN, data={"username": "alice", "password": DEFAULT_PASSWORD}
    )

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
    }
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 15 * 60
    assert body["scope"] == (
        "account:read account:write items:delete items:read items:write"
    )
    assert len(body["refresh_token"]) >= 43  # 256 bits, base64url


async def test_access_token_claims(
    client: AsyncClient, alice: User, settings: Settings
) -> None:
    token = (await login(client, "alice@example.com"))["access_token"]

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token,
        settings.SECRET_KEY.get_secret_value(),
        algorithms=["HS256"],
        audience=settings.JWT_AUDIENCE,
    )
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "HS256"
    assert claims["sub"] == str(alice.id)
    assert claims["email"] == "alice@example.com"
    assert claims["role"] == "user"
    assert claims["type"] == "access"
    assert claims["iss"] == settings.JWT_ISSUER
    assert (claims["first_name"], claims["last_name"]) == ("Alice", "Liddell")
    assert "desired_name" in claims
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["nbf"] <= time.time() + 1
    assert len(claims["jti"]) == 32


async def test_json_login_is_accepted(client: AsyncClient, alice: User) -> None:
    response = await client.post(
        LOGIN, json={"username": "ALICE", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200
    me = await client.get(
        "/api/v1/users/me", headers=bearer(response.json()["access_token"])
    )
    assert me.json()["data"]["username"] == "alice"


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        ("items:read", "items:read"),
        ("items:read users:read admin:all", "items:read"),
        ("", "account:read account:write items:delete items:read items:write"),
    ],
)
async def test_scopes_are_requested_intersected_with_role(
    client: AsyncClient, alice: User, requested: str, granted: str
) -> None:
    body = await login(client, "alice", scope=requested)
    assert body["scope"] == granted


async def test_no_grantable_scope_is_400(client: AsyncClient, alice: User) -> None:
    response = await client.post(
        LOGIN,
        data={"username": "alice", "password": DEFAULT_PASSWORD, "scope": "admin:all"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_SCOPE"


async def test_wrong_password_and_unknown_account_answer_alike(
    client: AsyncClient, alice: User
) -> None:
    wrong = await client.post(
        LOGIN, data={"username": "alice", "password": "Nope-1234"}
    )
    unknown = await client.post(
        LOGIN, data={"username": "nobody", "password": "Nope-1234"}
    )

    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "INVALID_CREDENTIALS"
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]


async def test_unknown_account_costs_a_hash_like_a_known_one(
    client: AsyncClient, alice: User
) -> None:
    async def timed(username: str) -> float:
        started = time.perf_counter()
        await client.post(LOGIN, data={"username": username, "password": "Nope-1234"})
        return time.perf_counter() - started

    await timed("warmup-unknown")  # first call computes the dummy hash
    known = sorted([await timed("alice") for _ in range(3)])[1]
    unknown = sorted([await timed(f"ghost{i}") for i in range(3)])[1]
    # Without the dummy verification an unknown login is one cheap query (~1 ms)
    # against ~20+ ms of argon2id; with it both cost about the same.
    assert unknown > known * 0.5


async def test_no_database_connection_is_held_while_the_password_hashes(
    app: Any,
    client: AsyncClient,
    alice: User,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held_while_hashing = pool_use_during_hashes(
        monkeypatch, app.state.password_hasher, engine
    )

    await login(client, "alice")
    await client.post(LOGIN, data={"username": "alice", "password": "Wrong-1234"})
    await client.post(LOGIN, data={"username": "nobody", "password": "Wrong-1234"})

    # A burst of logins queueing for the hash threads must not hold the pool.
    assert len(held_while_hashing) >= 3
    assert set(held_while_hashing) == {0}


async def test_inactive_account_cannot_log_in(app: Any, client: AsyncClient) -> None:
    await make_user(app, "sleeper", is_active=False)
    response = await client.post(
        LOGIN, data={"username": "sleeper", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ACCOUNT_DISABLED"


async def test_bcrypt_hash_is_upgraded_on_login(
    client: AsyncClient, alice: User, engine: AsyncEngine
) -> None:
    legacy = BcryptHasher().hash(DEFAULT_PASSWORD)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET hashed_password = :h WHERE id = :id"),
            {"h": legacy, "id": alice.id},
        )

    await login(client, "alice")

    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                text("SELECT hashed_password FROM users WHERE id = :id"),
                {"id": alice.id},
            )
        ).scalar_one()
    assert stored.startswith("$argon2id$")
    await login(client, "alice")  # the new hash verifies too


@pytest.mark.parametrize("multipart", [False, True])
async def test_form_values_are_decoded_like_any_form(
    app: Any, client: AsyncClient, multipart: bool
) -> None:
    # "+", "&", "%", "=", spaces and non-ASCII must survive form encoding.
    password = "P@ss w+rd&%2B=é-9"
    await make_user(app, "carol", password=password)
    form = {"username": " Carol@Example.com ", "password": password}
    files = {"note": ("note.txt", b"ignored")} if multipart else None

    response = await client.post(LOGIN, data=form, files=files)

    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "bearer"
    wrong = {**form, "password": password.replace("+", " ")}
    refused = await client.post(LOGIN, data=wrong, files=files)
    assert refused.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice"},
        {"password": "x"},
        {"username": "alice", "password": "x", "grant_type": "client_credentials"},
        {"username": "alice", "password": "x", "role": "admin"},
    ],
)
async def test_bad_login_bodies_are_422(
    client: AsyncClient, body: dict[str, str]
) -> None:
    response = await client.post(LOGIN, json=body)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"].startswith("body.")


async def test_malformed_json_login_is_400(client: AsyncClient) -> None:
    response = await client.post(
        LOGIN, content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MALFORMED_JSON"


async def test_openapi_wires_password_flow_and_scopes(client: AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    flow = schemes["OAuth2PasswordBearer"]["flows"]["password"]
    assert flow["tokenUrl"] == "/api/v1/auth/login"
    assert "users:read" in flow["scopes"]
    list_users = document["paths"]["/api/v1/users"]["get"]
    assert {"OAuth2PasswordBearer": ["users:read"]} in list_users["security"]
    login_body = document["paths"][LOGIN]["post"]["requestBody"]["content"]
    assert {"application/x-www-form-urlencoded", "application/json"} <= set(login_body)
