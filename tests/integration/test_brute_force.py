"""Failed logins lock the account (growing wait) and throttle the client IP."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from httpx import AsyncClient

from app.core.attempts import InMemoryLoginAttemptStore
from app.models import User
from app.services import login_guard
from app.services.login_guard import LoginGuard
from tests.conftest import DEFAULT_PASSWORD, make_user
from tests.helpers import capture_logs

LOGIN = "/api/v1/auth/login"


async def attempt(
    client: AsyncClient, username: str, password: str = "Wrong-Pass-1"
) -> Any:
    return await client.post(LOGIN, data={"username": username, "password": password})


async def test_five_failures_lock_the_account(client: AsyncClient, alice: User) -> None:
    for _ in range(4):
        assert (await attempt(client, "alice")).status_code == 401
    fifth = await attempt(client, "alice")
    assert fifth.status_code == 401

    locked = await attempt(client, "alice", DEFAULT_PASSWORD)  # even the right password

    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "ACCOUNT_LOCKED"
    assert 1 <= int(locked.headers["retry-after"]) <= 60
    # Email and username share the lock: it is keyed by the account.
    assert (
        await attempt(client, "alice@example.com", DEFAULT_PASSWORD)
    ).status_code == 429


async def test_unknown_accounts_lock_the_same_way(client: AsyncClient) -> None:
    for _ in range(5):
        assert (await attempt(client, "ghost")).status_code == 401
    locked = await attempt(client, "ghost")
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "ACCOUNT_LOCKED"
    assert "retry-after" in locked.headers


async def test_lock_expires_and_the_wait_grows(
    client: AsyncClient, alice: User
) -> None:
    for _ in range(5):
        await attempt(client, "alice")
    with time_machine.travel(timedelta(seconds=61), tick=True):
        sixth = await attempt(client, "alice")  # allowed again, and fails again
        assert sixth.status_code == 401
        relocked = await attempt(client, "alice")
        assert relocked.status_code == 429
        assert 60 < int(relocked.headers["retry-after"]) <= 120  # doubled


async def test_a_burst_of_guesses_gets_no_more_tries_than_guesses_one_by_one(
    app: Any, client: AsyncClient, alice: User
) -> None:
    allowed = app.state.settings.LOGIN_MAX_FAILURES
    guesses = [f"Wrong-Guess-{n}" for n in range(20)] + [DEFAULT_PASSWORD]

    answers = await asyncio.gather(*(attempt(client, "alice", p) for p in guesses))

    statuses = [answer.status_code for answer in answers]
    # Only `allowed` of the 21 were checked against the hash; the rest were
    # refused as locked, the right password included.
    assert len([s for s in statuses if s in (200, 401)]) == allowed
    assert statuses.count(429) == len(guesses) - allowed
    assert (await attempt(client, "alice", DEFAULT_PASSWORD)).status_code == 429


async def test_concurrent_right_passwords_lock_nothing(
    app: Any, client: AsyncClient, alice: User
) -> None:
    answers = await asyncio.gather(
        *(attempt(client, "alice", DEFAULT_PASSWORD) for _ in range(10))
    )

    ok = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code != 200]
    # Attempts under way are not failures: at worst one waits for a slot and
    # is told to retry in a second, never that the account is locked.
    assert len(ok) >= app.state.settings.LOGIN_MAX_FAILURES
    for answer in refused:
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"]["code"] == "RATE_LIMITED"
        assert answer.headers["retry-after"] == "1"
    assert (await attempt(client, "alice", DEFAULT_PASSWORD)).status_code == 200


async def test_a_right_password_of_a_disabled_account_frees_its_slot(
    app: Any, client: AsyncClient
) -> None:
    await make_user(app, "gone", is_active=False)
    for _ in range(app.state.settings.LOGIN_MAX_FAILURES + 1):
        disabled = await attempt(client, "gone", DEFAULT_PASSWORD)
        assert disabled.status_code == 403  # not a failure, and not locked
    assert (await attempt(client, "gone")).status_code == 401


async def test_an_attempt_finding_every_slot_taken_is_told_to_retry(
    app: Any, client: AsyncClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(login_guard, "BUSY_WAIT_SECONDS", 0.05)
    store = app.state.login_attempts
    policy = LoginGuard(store, app.state.settings).policy
    for index in range(policy.max_failures):  # attempts under way, still hashing
        await store.begin_attempt(f"user:{alice.id}", str(index), time.time(), policy)

    busy = await attempt(client, "alice", DEFAULT_PASSWORD)

    assert busy.status_code == 429
    assert busy.json()["error"]["code"] == "RATE_LIMITED"
    assert busy.headers["retry-after"] == "1"


async def test_success_resets_the_counter(client: AsyncClient, alice: User) -> None:
    for _ in range(4):
        await attempt(client, "alice")
    assert (await attempt(client, "alice", DEFAULT_PASSWORD)).status_code == 200
    for _ in range(4):
        assert (await attempt(client, "alice")).status_code == 401
    assert (await attempt(client, "alice", DEFAULT_PASSWORD)).status_code == 200


async def test_failures_outside_the_window_are_forgotten(
    client: AsyncClient, alice: User
) -> None:
    for _ in range(4):
        await attempt(client, "alice")
    with time_machine.travel(timedelta(minutes=16), tick=True):
        for _ in range(4):
            assert (await attempt(client, "alice")).status_code == 401
        assert (await attempt(client, "alice", DEFAULT_PASSWORD)).status_code == 200


async def test_one_ip_failing_across_many_accounts_is_throttled(
    app: Any, client: AsyncClient
) -> None:
    limit = app.state.settings.LOGIN_IP_MAX_FAILURES
    for index in range(limit):
        assert (await attempt(client, f"spray{index}")).status_code == 401
    throttled = await attempt(client, "fresh-account")
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "RATE_LIMITED"


async def test_failures_are_logged_as_security_events_without_secrets(
    client: AsyncClient, alice: User
) -> None:
    with capture_logs() as stream:
        await attempt(client, "alice", "My-Secret-Guess-1")
    text = stream.getvalue()
    assert '"event":"login_failed"' in text
    assert '"reason":"wrong_password"' in text
    assert "My-Secret-Guess-1" not in text


async def test_store_prunes_expired_keys() -> None:
    store = InMemoryLoginAttemptStore(max_keys=2)
    await store.add_failure("a", now=0, window=10)
    await store.add_failure("b", now=0, window=10)
    await store.add_failure("c", now=100, window=10)
    assert (await store.get("a", 100)).failures == 0
    assert (await store.get("c", 100)).failures == 1
