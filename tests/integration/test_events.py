"""Domain events on the embedded default: outbox, in-process relay, email handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
import time_machine
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.email import EmailUnavailableError
from app.core.events import Event, InProcessPublisher
from app.main import create_app
from app.models import OutboxEvent
from app.services import events
from app.services import relay as relay_module
from app.services.events import to_event
from app.services.handlers import Handler
from app.services.relay import OutboxRelay
from tests.conftest import (
    DEFAULT_PASSWORD,
    bearer,
    login,
    make_settings,
    make_user,
    truncate_all,
)
from tests.helpers import (
    MailSink,
    body_text,
    mail_sink,
    recorded_statements,
    token_from,
)

SIGNUP = "/api/v1/auth/signup"


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with mail_sink() as running:
        yield running


@pytest.fixture
async def mail_app(
    database_url: str, sink: MailSink, tmp_path: Any
) -> AsyncIterator[Any]:
    """An app whose handlers send through the in-process SMTP server."""
    app = create_app(
        make_settings(
            DATABASE_URL=database_url,
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=sink.port,
            SMTP_TLS=False,
            STORAGE_DIR=str(tmp_path),
            EVENT_RETRY_BASE_SECONDS=0.01,
            EVENT_MAX_DELIVERIES=3,
        )
    )
    await truncate_all(app.state.database.engine)
    yield app
    await app.state.database.dispose()


@pytest.fixture
async def http(mail_app: Any) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=mail_app, client=("198.51.100.9", 5000))
    async with AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def outbox(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT * FROM outbox_events ORDER BY id"))
        return [dict(row._mapping) for row in rows]


async def relay(app: Any) -> int:
    sent: int = await app.state.events.relay.publish_pending()
    return sent


async def drain(app: Any) -> None:
    """Relay until nothing is left (each pass sends one event per aggregate)."""
    while await relay(app):
        pass


async def test_signup_writes_one_event_in_its_transaction(
    client: AsyncClient, engine: AsyncEngine, signup_payload: dict[str, Any]
) -> None:
    await client.post(SIGNUP, json=signup_payload)
    await client.post(SIGNUP, json=signup_payload)  # 409: writes nothing

    [event] = await outbox(engine)
    assert event["event_type"] == "user.created"
    assert event["aggregate_type"] == "user"
    assert event["published_at"] is None


async def test_signup_sends_exactly_one_welcome_email(
    mail_app: Any, http: AsyncClient, sink: MailSink, signup_payload: dict[str, Any]
) -> None:
    await http.post(SIGNUP, json=signup_payload)

    assert await relay(mail_app) == 1
    assert await relay(mail_app) == 0  # nothing left to publish
    [message] = sink.messages
    assert message["To"] == "Ada.Lovelace@example.com"
    assert "Welcome" in message["Subject"]
    assert "Ada" in body_text(message)
    [row] = await outbox(mail_app.state.database.engine)
    assert row["published_at"] is not None
    assert row["done_at"] is not None  # handled in process: nothing left to do


async def test_a_duplicate_delivery_is_ignored(
    mail_app: Any, http: AsyncClient, sink: MailSink, signup_payload: dict[str, Any]
) -> None:
    """The relay crashing between publish and mark-published re-sends the event."""
    await http.post(SIGNUP, json=signup_payload)
    async with mail_app.state.database.sessionmaker() as session:
        row = (await session.execute(OutboxEvent.__table__.select())).first()
        assert row is not None
    event = Event(
        event_id=row.event_id,
        event_type=row.event_type,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        occurred_at=row.occurred_at,
        payload=row.payload,
    )
    dispatcher = mail_app.state.events.dispatcher

    await dispatcher.dispatch(event)  # published, then the relay "crashed"
    await relay(mail_app)  # the relay publishes it again after a restart
    await dispatcher.dispatch(event)

    assert len(sink.messages) == 1


async def test_item_events_keep_their_order(
    app: Any, client: AsyncClient, engine: AsyncEngine, alice: Any
) -> None:
    token = (await login(client, "alice"))["access_token"]
    created = await client.post(
        "/api/v1/items", json={"title": "a"}, headers=bearer(token)
    )
    item_id = created.json()["data"]["id"]
    await client.patch(
        f"/api/v1/items/{item_id}", json={"title": "b"}, headers=bearer(token)
    )
    await client.delete(f"/api/v1/items/{item_id}", headers=bearer(token))

    item_events = [e for e in await outbox(engine) if e["aggregate_type"] == "item"]
    assert [e["event_type"] for e in item_events] == [
        "item.created",
        "item.updated",
        "item.deleted",
    ]
    assert all(e["aggregate_id"] == str(item_id) for e in item_events)


async def test_status_and_password_events(
    app: Any, client: AsyncClient, engine: AsyncEngine, alice: Any, admin: Any
) -> None:
    root = (await login(client, "root"))["access_token"]
    await client.patch(
        f"/api/v1/users/{alice.id}", json={"is_active": False}, headers=bearer(root)
    )
    await client.patch(
        f"/api/v1/users/{alice.id}", json={"is_active": True}, headers=bearer(root)
    )
    alice_token = (await login(client, "alice"))["access_token"]
    await client.post(
        "/api/v1/users/me/password",
        json={
            "current_password": DEFAULT_PASSWORD,
            "new_password": "Other-Pass-1",
            "confirm_password": "Other-Pass-1",
        },
        headers=bearer(alice_token),
    )
    types = [
        e["event_type"]
        for e in await outbox(engine)
        if e["aggregate_id"] == str(alice.id)
    ]
    assert types[-3:] == ["user.deactivated", "user.activated", "user.password_changed"]


class TestFailures:
    async def test_failing_handler_is_retried_then_given_up(
        self, mail_app: Any, http: AsyncClient, signup_payload: dict[str, Any]
    ) -> None:
        calls: list[str] = []

        async def broken(event: Event) -> None:
            calls.append(event.event_id)
            raise RuntimeError("mail server on fire")

        dispatcher = mail_app.state.events.dispatcher
        dispatcher.handlers["user.created"] = [
            Handler("broken", mail_app.state.database.sessionmaker, broken)
        ]
        await http.post(SIGNUP, json=signup_payload)
        engine = mail_app.state.database.engine

        assert await relay(mail_app) == 0
        [row] = await outbox(engine)
        assert (row["attempts"], row["published_at"]) == (1, None)
        assert "mail server on fire" in row["last_error"]
        for step in range(1, 6):
            with time_machine.travel(timedelta(minutes=10 * step), tick=True):
                await relay(mail_app)
        [row] = await outbox(engine)
        assert (
            row["attempts"] == 3
        )  # EVENT_MAX_DELIVERIES: given up, kept for inspection
        assert len(calls) == 3

    async def test_a_stuck_event_holds_back_only_its_own_aggregate(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
    ) -> None:
        failing = {"first": True}

        async def flaky(event: Event) -> None:
            if failing["first"]:
                failing["first"] = False
                raise RuntimeError("transient")

        dispatcher = mail_app.state.events.dispatcher
        dispatcher.on(
            "user.deactivated",
            Handler("flaky", mail_app.state.database.sessionmaker, flaky),
        )
        await make_user(mail_app, "root", role="admin")
        victim = await make_user(mail_app, "victim")
        other = await make_user(mail_app, "other")
        token = (await login(http, "root"))["access_token"]
        await relay(mail_app)  # the three user.created events go out first
        for user in (victim, other):
            await http.patch(
                f"/api/v1/users/{user.id}",
                json={"is_active": False},
                headers=bearer(token),
            )
        await http.patch(
            f"/api/v1/users/{victim.id}",
            json={"is_active": True},
            headers=bearer(token),
        )

        await relay(mail_app)
        rows = await outbox(mail_app.state.database.engine)
        state = {(r["aggregate_id"], r["event_type"]): r["published_at"] for r in rows}
        assert state[(str(victim.id), "user.deactivated")] is None  # failed once
        assert state[(str(victim.id), "user.activated")] is None  # waits behind it
        assert state[(str(other.id), "user.deactivated")] is not None  # unaffected

        with time_machine.travel(timedelta(seconds=5), tick=True):
            await relay(mail_app)
            await relay(mail_app)
        rows = await outbox(mail_app.state.database.engine)
        assert all(r["published_at"] is not None for r in rows)
        published = [r for r in rows if r["aggregate_id"] == str(victim.id)]
        assert [
            r["event_type"] for r in sorted(published, key=lambda r: r["published_at"])
        ][-2:] == ["user.deactivated", "user.activated"]


async def emailed_reset_token(app: Any, http: AsyncClient, sink: MailSink) -> str:
    """Ask for a reset of ada's password; the token of the emailed link."""
    await http.post(
        "/api/v1/auth/password-reset/request",
        json={"email": "ada.lovelace@example.com"},
    )
    await drain(app)
    return token_from(
        next(m for m in sink.messages if "reset-password?token=" in body_text(m))
    )


RESET_REQUEST = "/api/v1/auth/password-reset/request"


def _post_scope(path: str, body: bytes) -> dict[str, Any]:
    """A raw ASGI scope of a JSON POST (to watch what the app sends, and when)."""
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.7", 40000),
        "server": ("testserver", 80),
    }


async def outbox_rows(app: Any) -> list[str]:
    """Event types in the outbox, oldest first."""
    async with app.state.database.engine.connect() as connection:
        result = await connection.execute(
            text("SELECT event_type FROM outbox_events ORDER BY id")
        )
        return list(result.scalars())


def reset_body(token: str, password: str = "Fresh-Start-42") -> dict[str, str]:
    """The body of a password-reset confirmation."""
    return {"token": token, "new_password": password, "confirm_password": password}


class TestEmailFlows:
    async def test_email_verification(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
    ) -> None:
        await http.post(SIGNUP, json=signup_payload)
        token = (await login(http, "ada", "Analytical1"))["access_token"]

        requested = await http.post(
            "/api/v1/auth/verify-email/request", headers=bearer(token)
        )
        await drain(mail_app)

        assert requested.status_code == 202
        [mail] = [m for m in sink.messages if "verify" in body_text(m).lower()]
        link_token = token_from(mail)
        assert "http://localhost:3000/verify-email?token=" in body_text(mail)
        confirmed = await http.post(
            "/api/v1/auth/verify-email/confirm", json={"token": link_token}
        )
        again = await http.post(
            "/api/v1/auth/verify-email/confirm", json={"token": link_token}
        )
        me = await http.get("/api/v1/users/me", headers=bearer(token))
        assert confirmed.status_code == 204
        assert again.status_code == 400
        assert again.json()["error"]["code"] == "INVALID_OR_EXPIRED_TOKEN"
        assert me.json()["data"]["is_verified"] is True
        async with mail_app.state.database.engine.connect() as connection:
            stored = (
                (await connection.execute(text("SELECT token_hash FROM action_tokens")))
                .scalars()
                .all()
            )
        assert link_token not in stored  # hashed at rest

    async def test_a_flood_of_reset_requests_sends_three_emails(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
    ) -> None:
        await http.post(SIGNUP, json=signup_payload)
        body = {"email": "ada.lovelace@example.com"}

        answers = await asyncio.gather(
            *(http.post(RESET_REQUEST, json=body) for _ in range(10))
        )
        await drain(mail_app)

        assert [answer.status_code for answer in answers] == [202] * 10
        assert len({answer.text for answer in answers}) == 1  # nothing told apart
        resets = [m for m in sink.messages if "reset-password?token=" in body_text(m)]
        assert len(resets) == 3  # PASSWORD_RESET_EMAIL_LIMIT: 3 per 15 minutes
        with time_machine.travel(timedelta(minutes=16), tick=True):
            assert (await http.post(RESET_REQUEST, json=body)).status_code == 202
            await drain(mail_app)
        resets = [m for m in sink.messages if "reset-password?token=" in body_text(m)]
        assert len(resets) == 4

    async def test_a_flood_of_verification_requests_sends_three_emails(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
    ) -> None:
        await http.post(SIGNUP, json=signup_payload)
        headers = bearer((await login(http, "ada", "Analytical1"))["access_token"])

        answers = [
            await http.post("/api/v1/auth/verify-email/request", headers=headers)
            for _ in range(10)
        ]
        await drain(mail_app)

        assert [answer.status_code for answer in answers] == [202] * 10
        links = [m for m in sink.messages if "verify-email?token=" in body_text(m)]
        assert len(links) == 3

    async def test_password_reset(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
    ) -> None:
        await http.post(SIGNUP, json=signup_payload)
        old_session = await login(http, "ada", "Analytical1")

        unknown = await http.post(
            "/api/v1/auth/password-reset/request", json={"email": "ghost@example.com"}
        )
        known = await http.post(
            "/api/v1/auth/password-reset/request",
            json={"email": "ADA.lovelace@example.com"},
        )
        await drain(mail_app)

        assert unknown.status_code == known.status_code == 202
        assert unknown.json() == known.json()  # no account enumeration
        resets = [m for m in sink.messages if "reset-password?token=" in body_text(m)]
        assert [m["To"] for m in resets] == ["Ada.Lovelace@example.com"]
        link_token = token_from(resets[0])
        body = reset_body(link_token)
        confirmed = await http.post("/api/v1/auth/password-reset/confirm", json=body)
        reused = await http.post("/api/v1/auth/password-reset/confirm", json=body)

        assert confirmed.status_code == 204
        assert reused.status_code == 400
        me = await http.get(
            "/api/v1/users/me", headers=bearer(old_session["access_token"])
        )
        assert me.status_code == 401  # every session revoked
        refreshed = await http.post(
            "/api/v1/auth/refresh", json={"refresh_token": old_session["refresh_token"]}
        )
        assert refreshed.status_code == 401
        await login(http, "ada", "Fresh-Start-42")

    async def test_reset_hashes_with_no_connection_or_write_lock_held(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        await http.post(SIGNUP, json=signup_payload)
        token = (await login(http, "ada", "Analytical1"))["access_token"]
        link_token = await emailed_reset_token(mail_app, http, sink)
        engine = mail_app.state.database.engine
        hasher = mail_app.state.password_hasher
        hashing, release = asyncio.Event(), asyncio.Event()
        held: list[int] = []
        real_hash = hasher.hash

        async def held_hash(password: str) -> str:
            held.append(engine.pool.checkedout())
            hashing.set()
            await release.wait()  # a hash that waits its turn behind others
            return await real_hash(password)

        monkeypatch.setattr(hasher, "hash", held_hash)
        reset = asyncio.create_task(
            http.post(
                "/api/v1/auth/password-reset/confirm", json=reset_body(link_token)
            )
        )
        await asyncio.wait_for(hashing.wait(), 10)
        # Another request writes while the reset's hash waits: on SQLite the
        # write lock is not the reset's, and it holds no pooled connection.
        created = await asyncio.wait_for(
            http.post(
                "/api/v1/items", json={"title": "meanwhile"}, headers=bearer(token)
            ),
            5,
        )
        release.set()
        confirmed = await reset

        assert held == [0]
        assert created.status_code == 201
        assert confirmed.status_code == 204
        await login(http, "ada", "Fresh-Start-42")

    async def test_unusable_reset_token_costs_no_hash(
        self, mail_app: Any, http: AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        hashed: list[str] = []

        async def counted_hash(password: str) -> str:
            hashed.append(password)
            return password

        monkeypatch.setattr(mail_app.state.password_hasher, "hash", counted_hash)
        response = await http.post(
            "/api/v1/auth/password-reset/confirm",
            json=reset_body("not-a-token-anyone-was-sent"),
        )

        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_OR_EXPIRED_TOKEN"
        assert hashed == []

    @pytest.fixture
    async def reset_link(
        self,
        mail_app: Any,
        http: AsyncClient,
        sink: MailSink,
        signup_payload: dict[str, Any],
    ) -> str:
        """Ada signed up and asked for a reset: the token of the mailed link."""
        await http.post(SIGNUP, json=signup_payload)
        return await emailed_reset_token(mail_app, http, sink)

    @pytest.mark.parametrize("email", ["ada.lovelace@example.com", "no@example.com"])
    async def test_a_reset_request_answers_before_looking_anything_up(
        self,
        mail_app: Any,
        http: AsyncClient,
        signup_payload: dict[str, Any],
        email: str,
    ) -> None:
        # Answering after the lookup (and, for a real account, a write and a
        # commit) let the response time tell which emails have accounts.
        await http.post(SIGNUP, json=signup_payload)
        body = orjson.dumps({"email": email})
        statements_when_answered: list[int] = []
        with recorded_statements(mail_app.state.database.engine) as statements:

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    assert message["status"] == 202
                    statements_when_answered.append(len(statements))

            await mail_app(_post_scope(RESET_REQUEST, body), receive, send)

        assert statements_when_answered == [0]
        assert statements  # the lookup did run, after the answer
        outbox = await outbox_rows(mail_app)
        resets = [e for e in outbox if e == "user.password_reset_requested"]
        assert len(resets) == (1 if email.startswith("ada") else 0)

    async def test_a_password_change_retires_an_emailed_reset_link(
        self, http: AsyncClient, reset_link: str
    ) -> None:
        link_token = reset_link
        session = await login(http, "ada", "Analytical1")
        changed = await http.post(
            "/api/v1/users/me/password",
            json={
                "current_password": "Analytical1",
                "new_password": "Owner-Chose-This-9",
                "confirm_password": "Owner-Chose-This-9",
            },
            headers=bearer(session["access_token"]),
        )
        assert changed.status_code == 204, changed.text

        late = await http.post(
            "/api/v1/auth/password-reset/confirm", json=reset_body(link_token)
        )

        assert late.status_code == 400
        assert late.json()["error"]["code"] == "INVALID_OR_EXPIRED_TOKEN"
        await login(http, "ada", "Owner-Chose-This-9")  # the change stands

    async def test_expired_reset_token(
        self, http: AsyncClient, reset_link: str
    ) -> None:
        link_token = reset_link
        with time_machine.travel(timedelta(minutes=61), tick=True):
            response = await http.post(
                "/api/v1/auth/password-reset/confirm", json=reset_body(link_token)
            )
        assert response.status_code == 400


def test_event_round_trips_through_stream_fields() -> None:
    from datetime import UTC, datetime

    event = Event(
        "e1",
        "user.created",
        "user",
        "7",
        datetime(2026, 1, 1, tzinfo=UTC),
        {"a": [1, 2]},
    )
    assert Event.from_fields(event.to_fields()) == event
    assert to_event  # the outbox row mapper is importable from the service


class RecordingPublisher:
    """Keeps what it is given, in order (a transport that never fails)."""

    def __init__(self) -> None:
        self.aggregates: list[str] = []

    async def publish(self, event: Event) -> None:
        self.aggregates.append(event.aggregate_id)


class BlockingPublisher:
    """Holds the first publish until released (a slow transport, a long send)."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def publish(self, event: Event) -> None:
        self.entered.set()
        await self.release.wait()
        self.published.append(event.aggregate_id)


def _sessions(app: Any) -> Any:
    return app.state.database.sessionmaker


async def _publishing_held(app: Any, slow: BlockingPublisher) -> asyncio.Task[int]:
    """One event in the outbox, and a relay pass stuck publishing it."""
    async with _sessions(app)() as session:
        await events.emit(session, "item.created", "item", 7, {})
        await session.commit()
    running = asyncio.create_task(OutboxRelay(_sessions(app), slow).publish_pending())
    await asyncio.wait_for(slow.entered.wait(), 5)
    return running


async def test_two_relays_never_publish_the_same_event(
    app: Any, client: AsyncClient
) -> None:
    # Two relays on one database: two `serve` workers on one SQLite file, or
    # API processes and workers on PostgreSQL.
    slow, other = BlockingPublisher(), RecordingPublisher()
    first = await _publishing_held(app, slow)

    sent_by_other = await OutboxRelay(_sessions(app), other).publish_pending()
    slow.release.set()

    assert (await first, sent_by_other) == (1, 0)
    assert (slow.published, other.aggregates) == (["7"], [])


async def test_events_a_dead_relay_had_claimed_go_out_later(
    app: Any, client: AsyncClient
) -> None:
    slow, other = BlockingPublisher(), RecordingPublisher()
    dying = await _publishing_held(app, slow)
    dying.cancel()  # the process dies mid-publish
    with pytest.raises(asyncio.CancelledError):
        await dying

    with time_machine.travel(relay_module.CLAIM_LEASE + timedelta(seconds=1)):
        sent = await OutboxRelay(_sessions(app), other).publish_pending()

    assert (sent, other.aggregates) == (1, ["7"])


async def test_a_mail_outage_never_uses_up_an_events_attempts(
    app: Any, client: AsyncClient, engine: AsyncEngine
) -> None:
    # Handlers in process (no Redis): the mail server is down for a while.
    async with _sessions(app)() as session:
        await events.emit(session, "item.created", "item", 7, {})
        await session.commit()
    delivered: list[str] = []
    mail_server_up = False

    async def dispatch(event: Event) -> None:
        if not mail_server_up:
            raise EmailUnavailableError("connection refused")
        delivered.append(event.aggregate_id)

    relay = OutboxRelay(_sessions(app), InProcessPublisher(dispatch), max_attempts=3)
    step = timedelta(seconds=relay_module.MAX_TRANSPORT_BACKOFF_SECONDS + 1)
    for passes in range(1, 11):  # far more passes than attempts allowed
        with time_machine.travel(passes * step):
            assert await relay.publish_pending() == 0
    mail_server_up = True
    with time_machine.travel(12 * step):
        sent = await relay.publish_pending()

    assert (sent, delivered) == (1, ["7"])
    async with engine.connect() as connection:
        attempts = (
            await connection.execute(text("SELECT attempts FROM outbox_events"))
        ).scalar_one()
    assert attempts == 0


async def test_a_running_relay_empties_a_backlog_at_once_then_gathers(
    app: Any, client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "GATHER_SECONDS", 0.5)
    publisher = RecordingPublisher()
    outbox_relay = OutboxRelay(app.state.database.sessionmaker, publisher, batch_size=2)
    async with app.state.database.sessionmaker() as session:
        for item_id in range(5):
            await events.emit(session, "item.created", "item", item_id, {})
        await session.commit()
    passes: list[tuple[float, int]] = []
    four_passes = asyncio.Event()
    publish_pending = outbox_relay.publish_pending

    async def timed_pass() -> int:
        sent = await publish_pending()
        passes.append((time.monotonic(), sent))
        if len(passes) == 4:
            four_passes.set()
        return sent

    monkeypatch.setattr(outbox_relay, "publish_pending", timed_pass)
    stop = asyncio.Event()
    running = asyncio.create_task(outbox_relay.run(stop, poll_seconds=30))
    await asyncio.wait_for(four_passes.wait(), 10)
    stop.set()
    await running

    assert publisher.aggregates == ["0", "1", "2", "3", "4"]
    assert [sent for _, sent in passes] == [2, 2, 1, 0]
    (full, _), (_, _), (partial, _), (empty, _) = passes
    # Full batches: a backlog, sent without waiting; after a partial one the
    # relay waits a moment for more rather than querying again at once.
    assert partial - full < 0.5
    assert empty - partial >= 0.5
