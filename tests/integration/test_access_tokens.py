"""Bearer-token verification: forgeries, expiry, revocation, scopes, challenges."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from typing import Any

import jwt
import pytest
import time_machine
from httpx import AsyncClient

from app.core.config import Settings
from app.models import User
from app.services import auth_cache
from tests.conftest import bearer, login, make_user
from tests.helpers import capture_logs, claims_of

ME = "/api/v1/users/me"
# The HS512 forgery uses our 46-byte test key; PyJWT warns, the server refuses it.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def resign(claims: dict[str, Any], key: str, **header: str) -> str:
    return jwt.encode(
        claims, key, algorithm="HS256", headers={"typ": "at+jwt", **header}
    )


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["error"]["code"] == "INVALID_TOKEN"


async def test_missing_token_is_401_with_bare_challenge(client: AsyncClient) -> None:
    response = await client.get(ME)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


async def test_valid_token_reads_me(client: AsyncClient, alice: User) -> None:
    token = (await login(client, "alice"))["access_token"]
    response = await client.get(ME, headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["data"]["id"] == alice.id


def _forgeries(token: str, settings: Settings) -> dict[str, str]:
    claims = claims_of(token, settings)
    key = settings.SECRET_KEY.get_secret_value()
    header, payload, signature = token.split(".")
    tampered_claims = {**claims, "role": "admin", "scope": "admin:all users:read"}
    tampered = base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).rstrip(
        b"="
    )
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(
        b"="
    )
    return {
        "other key": resign(claims, "another-secret-key-of-sufficient-length-000"),
        "alg none": f"{none_header.decode()}.{payload}.",
        "tampered payload": f"{header}.{tampered.decode()}.{signature}",
        "wrong audience": resign({**claims, "aud": "someone-else"}, key),
        "wrong issuer": resign({**claims, "iss": "https://evil.example"}, key),
        "wrong type claim": resign({**claims, "type": "refresh"}, key),
        "wrong typ header": jwt.encode(
            claims, key, algorithm="HS256", headers={"typ": "JWT"}
        ),
        "other algorithm": jwt.encode(
            claims, key, algorithm="HS512", headers={"typ": "at+jwt"}
        ),
        "non-numeric sub": resign({**claims, "sub": "alice"}, key),
        "missing jti": resign({k: v for k, v in claims.items() if k != "jti"}, key),
        "garbage": "not-a-jwt",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "other key",
        "alg none",
        "tampered payload",
        "wrong audience",
        "wrong issuer",
        "wrong type claim",
        "wrong typ header",
        "other algorithm",
        "non-numeric sub",
        "missing jti",
        "garbage",
    ],
)
async def test_forged_tokens_are_refused(
    client: AsyncClient, alice: User, settings: Settings, kind: str
) -> None:
    token = (await login(client, "alice"))["access_token"]
    forged = _forgeries(token, settings)[kind]
    assert_invalid_token(await client.get(ME, headers=bearer(forged)))


def _in_arabic_indic_digits(number: int) -> str:
    return "".join(chr(0x0660 + int(digit)) for digit in str(number))


@pytest.mark.parametrize(
    "subject",
    [
        "arabic-indic digits",  # "٦": str.isdigit() and int() both accept it
        "1" * 30,  # past any id column (was a 500 on both backends)
        str(2**31),
        "0",
        "0{id}",
        "{id} ",
        "-{id}",
        "",
    ],
)
async def test_a_subject_that_is_not_an_id_is_refused(
    client: AsyncClient, alice: User, settings: Settings, subject: str
) -> None:
    # Signed with the service's own key: only the subject's form is wrong.
    claims = claims_of((await login(client, "alice"))["access_token"], settings)
    if subject == "arabic-indic digits":
        subject = _in_arabic_indic_digits(alice.id)
    claims["sub"] = subject.format(id=alice.id)
    token = resign(claims, settings.SECRET_KEY.get_secret_value())
    assert_invalid_token(await client.get(ME, headers=bearer(token)))
    assert_invalid_token(
        await client.post("/api/v1/items", json={"title": "t"}, headers=bearer(token))
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"scope": ["items:read", "items:write"]},  # was a 500 (no .split())
        {"sid": "\x00" * 32},  # reached the session query (PostgreSQL: a 500)
        {"sid": ["a" * 32]},
        {"ver": "0"},  # int() made it a version
        {"ver": True},
        {"email": None},
        {"desired_name": 7},
    ],
)
async def test_claims_of_the_wrong_type_are_refused_not_coerced(
    client: AsyncClient, alice: User, settings: Settings, changes: dict[str, Any]
) -> None:
    claims = claims_of((await login(client, "alice"))["access_token"], settings)
    key = settings.SECRET_KEY.get_secret_value()
    assert_invalid_token(
        await client.get(ME, headers=bearer(resign({**claims, **changes}, key)))
    )


async def test_refresh_token_is_not_an_access_token(
    client: AsyncClient, alice: User
) -> None:
    tokens = await login(client, "alice")
    assert_invalid_token(await client.get(ME, headers=bearer(tokens["refresh_token"])))


async def test_expired_token_is_refused(client: AsyncClient, alice: User) -> None:
    token = (await login(client, "alice"))["access_token"]
    with time_machine.travel(timedelta(minutes=14), tick=True):
        assert (await client.get(ME, headers=bearer(token))).status_code == 200
    with time_machine.travel(timedelta(minutes=16), tick=True):
        assert_invalid_token(await client.get(ME, headers=bearer(token)))


async def test_token_of_deleted_user_is_refused(
    app: Any, client: AsyncClient, admin: User
) -> None:
    victim = await make_user(app, "victim")
    victim_token = (await login(client, "victim"))["access_token"]
    admin_token = (await login(client, "root"))["access_token"]
    deleted = await client.delete(
        f"/api/v1/users/{victim.id}?hard=true", headers=bearer(admin_token)
    )
    assert deleted.status_code == 204
    assert_invalid_token(await client.get(ME, headers=bearer(victim_token)))


async def test_deactivation_stops_tokens_at_once(
    client: AsyncClient, alice: User, admin: User
) -> None:
    alice_tokens = await login(client, "alice")
    admin_token = (await login(client, "root"))["access_token"]

    response = await client.patch(
        f"/api/v1/users/{alice.id}",
        json={"is_active": False},
        headers=bearer(admin_token),
    )

    assert response.status_code == 200
    assert_invalid_token(
        await client.get(ME, headers=bearer(alice_tokens["access_token"]))
    )
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": alice_tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401


async def test_deactivation_during_a_cache_fill_still_stops_tokens(
    app: Any, client: AsyncClient, alice: User, admin: User, monkeypatch: Any
) -> None:
    # A request misses the access cache and reads alice as active; before it
    # fills the cache, an admin deactivates her (commit, then the entry is
    # deleted). The late fill must not bring the old state back for a TTL.
    alice_token = (await login(client, "alice"))["access_token"]
    admin_token = (await login(client, "root"))["access_token"]
    assert (await client.get(ME, headers=bearer(admin_token))).status_code == 200
    read, proceed = asyncio.Event(), asyncio.Event()
    load = auth_cache.load_access_state

    async def slow_load(session: Any, user_id: int, session_id: str | None) -> Any:
        state = await load(session, user_id, session_id)
        if user_id == alice.id and not read.is_set():
            read.set()
            await proceed.wait()
        return state

    monkeypatch.setattr(auth_cache, "load_access_state", slow_load)
    in_flight = asyncio.create_task(client.get(ME, headers=bearer(alice_token)))
    await asyncio.wait_for(read.wait(), 10)
    deactivated = await client.patch(
        f"/api/v1/users/{alice.id}",
        json={"is_active": False},
        headers=bearer(admin_token),
    )
    proceed.set()
    await in_flight  # read before the change: either answer is fair

    assert deactivated.status_code == 200
    assert_invalid_token(await client.get(ME, headers=bearer(alice_token)))


async def test_role_change_invalidates_old_tokens(
    client: AsyncClient, alice: User, admin: User
) -> None:
    old = (await login(client, "alice"))["access_token"]
    admin_token = (await login(client, "root"))["access_token"]
    await client.patch(
        f"/api/v1/users/{alice.id}",
        json={"role": "moderator"},
        headers=bearer(admin_token),
    )
    assert_invalid_token(await client.get(ME, headers=bearer(old)))
    new = await login(client, "alice")
    assert "users:read" in new["scope"].split()


async def test_missing_scope_is_403_with_insufficient_scope_challenge(
    client: AsyncClient, alice: User
) -> None:
    token = (await login(client, "alice"))["access_token"]
    response = await client.get("/api/v1/users", headers=bearer(token))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="users:read"'
    )
    assert response.json()["error"]["code"] == "INSUFFICIENT_SCOPE"


async def test_narrow_token_cannot_use_wider_role_rights(
    client: AsyncClient, admin: User
) -> None:
    narrow = (await login(client, "root", scope="items:read"))["access_token"]
    response = await client.get("/api/v1/users", headers=bearer(narrow))
    assert response.status_code == 403
    wide = (await login(client, "root"))["access_token"]
    assert (await client.get("/api/v1/users", headers=bearer(wide))).status_code == 200


async def test_auth_failures_are_logged_as_security_events(
    client: AsyncClient, alice: User
) -> None:
    token = (await login(client, "alice"))["access_token"]
    with capture_logs() as stream:
        await client.get(ME, headers=bearer("forged.token.value"))
        await client.get("/api/v1/users", headers=bearer(token))
    text = stream.getvalue()
    assert '"event":"invalid_token"' in text
    assert '"event":"insufficient_scope"' in text
    assert "forged.token.value" not in text
